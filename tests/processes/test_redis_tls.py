"""A `stem worker` process on a Redis server that speaks TLS only (``rediss://``) and asks
every client for a certificate, both made by the test with the openssl command."""

from __future__ import annotations

import asyncio
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
    """The server's files (clients must show a certificate) and the client's cert and key."""
    try:
        server = redis_server.make_certificates(directory, auth_clients=True)
    except redis_server.RedisServerUnavailable as exc:
        skip_or_fail(str(exc))
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
