"""stager: data staging for many-task workflows on cloud nodes.

The core data path, usable as a library without any daemon: digests,
locations, settings, the verified S3 object store, push and pull, transfer
planning, manifests and the embedded S3 server.
"""

__version__ = "0.1.0"
