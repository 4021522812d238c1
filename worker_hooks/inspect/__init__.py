"""What a user asks of a workflow after the fact: a task's logs (``stager logs``).

Reads the dispatcher (through its client) and S3 (the logs the wrapper
uploaded); imports neither the wrapper nor the worker.
"""
