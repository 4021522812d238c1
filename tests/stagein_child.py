"""A separate process that stages one input through a shared cache.

Run as ``python -m tests.stagein_child CACHE_DIR SANDBOX URL [DIGEST SIZE]``
with the S3 endpoint and keys in the environment; prints the staged file's
inode and the tier it came from.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fsd.cache import NodeCache
from fsd.stagein import StageInput, staged_inputs
from stager.digest import Digest
from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.settings import load_settings


def main(argv: list[str]) -> None:
    cache_dir, sandbox, url = Path(argv[0]), Path(argv[1]), argv[2]
    digest, size = (Digest.parse(argv[3]), int(argv[4])) if len(argv) > 3 else (None, None)
    cache = NodeCache(cache_dir, quota_bytes=4 * 1024**3)
    with ObjectStore(load_settings({"progress": False})) as store:
        spec = [StageInput(source=S3Url.parse(url), path="input.bin", digest=digest, size=size)]
        with staged_inputs(spec, sandbox, cache=cache, store=store) as staged:
            print(staged[0].path.stat().st_ino, staged[0].tier.value, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
