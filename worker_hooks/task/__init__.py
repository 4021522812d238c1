"""The task model and the wire protocol: frozen, validated, pure.

Owns: task specs and their JSON form (``spec``), reading a spec document
field by field (``parse``), result manifests (``result``), workflows and
their dependency checks (``workflow``), reading spec and workflow files
(``documents``) and the messages between submit, dispatcher and worker
(``protocol``). May import ``stager``'s value types (digest, locations,
errors); never ``fsd``, an S3 client, or another room.
"""
