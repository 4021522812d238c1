"""A spot interruption notice: the worker drains and sends its `local` outputs to S3 in time.

The instance metadata service is a small fake (IMDSv2: a token, then the
instance action) started by the test; the worker is a real process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stager.locations import S3Url
from stager.objectstore import ObjectStore
from stager.s3server import LocalS3Server
from tests.integration.test_dispatch import submit, wait_for
from tests.integration.test_peers import SERVE, spec, state_of
from worker_hooks.dispatch.scheduling import Policy
from worker_hooks.local.cluster import LocalCluster
from worker_hooks.worker.spot import SpotWatcher

TOKEN = "fake-imds-token"


class FakeMetadata(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.notice: dict[str, str] | None = None
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeMetadata

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        )
        self._send(200, TOKEN.encode()) if ok else self._send(400)

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._send(401)
        elif self.path != "/latest/meta-data/spot/instance-action" or self.server.notice is None:
            self._send(404)
        else:
            self._send(200, json.dumps(self.server.notice).encode())


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    server = FakeMetadata()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def give_notice(server: FakeMetadata, seconds: float) -> None:
    when = datetime.now(UTC) + timedelta(seconds=seconds)
    server.notice = {"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_the_watcher_reads_imdsv2_and_stops_quietly_off_ec2(metadata: FakeMetadata) -> None:
    watcher = SpotWatcher(metadata.url, poll_s=0.05)
    assert watcher.check() is None
    give_notice(metadata, 120)
    notice = watcher.check()
    assert notice is not None and notice.action == "terminate"
    assert 100 < notice.deadline - time.time() <= 121
    lines: list[str] = []
    nowhere = SpotWatcher("http://127.0.0.1:9", timeout_s=0.5, log=lines.append)
    nowhere.start()
    nowhere._thread.join(timeout=5)
    assert not nowhere._thread.is_alive() and not nowhere.noticed.is_set() and lines


def test_a_spot_notice_drains_the_worker_and_saves_its_local_outputs(
    s3_server: LocalS3Server,
    tmp_path: Path,
    store: ObjectStore,
    prefix: S3Url,
    metadata: FakeMetadata,
) -> None:
    env = {
        **s3_server.env(),
        "STAGER_STATE_DIR": str(tmp_path / "state"),
        "STAGER_SPOT_METADATA_URL": metadata.url,
    }
    with LocalCluster(tmp_path / "c", env, policy=Policy.FIFO, lease_s=30) as cluster:
        worker = cluster.add_worker("spot", *SERVE)
        cluster.wait_for_workers(["spot"])
        produce = spec("p", "head -c 1000000 /dev/urandom > out.bin", prefix, "local")
        submit(cluster.client, [produce], "wf")
        wait_for(state_of(cluster, "p"))
        assert store.head(prefix.child("out/p.bin")) is None  # kept on the node
        give_notice(metadata, 120)
        assert worker.wait(timeout=90) == 0, cluster.log_of("spot")[-1500:]
        result = cluster.client.task("p").result
        assert result is not None
        info = store.head(result.outputs[0].url)
        assert info is not None and info.digest == result.outputs[0].digest
        assert cluster.client.status("wf").node_only == ()  # the dispatcher heard of it
        assert "spot interruption notice" in cluster.log_of("spot")
