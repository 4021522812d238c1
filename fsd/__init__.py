"""fsd: node storage (scratch cache, NFS-head mode, node file service).

Imports ``stager``; is imported only by ``worker_hooks``. Not built yet:
see the open issue "The node scratch cache".
"""
