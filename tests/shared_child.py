"""A process hammering a shared cache: ``python -m tests.shared_child ROOT SEED ROUNDS``.

Each round picks one of 12 payloads (derived from its index, so every process
agrees on the bytes), stages it into a fresh sandbox, and checks the bytes it
got. The quota holds 6 payloads for 8 processes, so they keep evicting
each other and sometimes wait for each other's pins.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from fsd.cache import NodeCache
from fsd.materialize import Materialize, materialize
from stager.digest import HashingWriter, digest_bytes

PAYLOAD_BYTES = 64 * 1024


def payload(index: int) -> bytes:
    return bytes([index]) * PAYLOAD_BYTES


def main(root: Path, seed: int, rounds: int) -> None:
    cache = NodeCache(root, quota_bytes=6 * PAYLOAD_BYTES)
    chooser = random.Random(seed)
    for round_number in range(rounds):
        index = chooser.randrange(12)
        data = payload(index)
        digest = digest_bytes(data)

        def fill(writer: HashingWriter, data: bytes = data) -> None:
            writer.write(data)

        with cache.pinned([digest]):
            entry = cache.ensure(digest, len(data), fill)
            dest = root.parent / f"sandbox-{seed}-{round_number}" / "in.bin"
            materialize(entry, dest, Materialize.LINK)
            if dest.read_bytes() != data:
                raise SystemExit(f"wrong bytes for payload {index}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
