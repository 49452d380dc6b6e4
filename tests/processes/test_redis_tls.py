"""A `stem worker` process on a Redis server that speaks TLS only (``rediss://``) and asks
every client for a certificate, both made by the test with the openssl command."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
import redis_server
from kill_harness import RECORD, WorkerGroup

from stem import AdapterError, Stem, TaskState
from stem_adapter_tests import skip_or_fail

pytestmark = [pytest.mark.redis, pytest.mark.processes]

APP = (
    """
import os
from stem import Stem, TaskContext

app = Stem.from_url(os.environ["STEM_URL"])
RUNS = os.environ["RUNS_FILE"]
"""
    + RECORD
    + """

@app.task(name="tls.add")
async def add(ctx: TaskContext, a: int, b: int) -> int:
    record("start", ctx.id)
    return a + b
"""
)


def make_certificates(directory: Path) -> tuple[redis_server.TlsFiles, Path, Path]:
    """A CA; a certificate for the server at 127.0.0.1 and one for a client, both signed by
    it (EC keys: quick to make). Returns the server's files and the client's cert and key."""
    if shutil.which("openssl") is None:
        skip_or_fail("the openssl command is needed to make test certificates")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "1", "-subj", "/CN=stem-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", *ec, "-subj", f"/CN=stem-test-{name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem")  # fmt: skip
    server = redis_server.TlsFiles(
        cert=str(directory / "server.pem"),
        key=str(directory / "server.key"),
        ca=str(directory / "ca.pem"),
        auth_clients=True,
    )
    return server, directory / "client.pem", directory / "client.key"


async def test_a_worker_process_round_trip_over_tls_with_a_client_certificate(
    tmp_path: Path,
) -> None:
    # Given a redis-server serving TLS only, which verifies its clients' certificates
    certs = tmp_path / "certs"
    certs.mkdir()
    tls, client_cert, client_key = make_certificates(certs)
    try:
        server = redis_server.start(tls=tls)
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(f"no redis-server with TLS: {exc}")
    url = f"{server.url}?ssl_ca_certs={tls.ca}&ssl_certfile={client_cert}&ssl_keyfile={client_key}"
    assert url.startswith("rediss://")
    group = WorkerGroup(tmp_path, APP, url=url)
    producer = Stem.from_url(url)
    try:
        # When a worker process runs tasks a producer enqueues through the same URL
        worker = group.start("-c", "4", "--heartbeat-interval", "1")
        refs = [await producer.enqueue("tls.add", [n, n]) for n in range(20)]
        results = await asyncio.gather(*(producer.wait_for_task(r, timeout=60) for r in refs))

        # Then every result comes back, the queue is empty, the worker says where it reads
        assert [r.value for r in results] == [2 * n for n in range(20)]
        assert {r.state for r in results} == {TaskState.SUCCEEDED}
        stats = await producer.broker.queue_stats("default")
        assert (stats.pending, stats.inflight, stats.dead) == (0, 0, 0)
        assert f"broker:      rediss://127.0.0.1:{server.port}/0" in group.log_of(worker)
        assert await group.terminate_all(30) == []

        # And without a client certificate the server turns the producer away, clearly
        anonymous = Stem.from_url(f"{server.url}?ssl_ca_certs={tls.ca}&connect_timeout=2")
        try:
            with pytest.raises(AdapterError, match=r"Redis server at rediss://127\.0\.0\.1"):
                await anonymous.enqueue("tls.add", [1, 1])
        finally:
            await anonymous.aclose()
    finally:
        await producer.aclose()
        group.close()
        server.stop()
