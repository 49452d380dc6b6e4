"""Start a throw-away ``redis-server`` on a free loopback port, for tests and benchmarks.

Standard library only, so any script can import it (put ``tools/`` on ``sys.path``)::

    import redis_server

    with redis_server.start() as server:          # no persistence, in a temporary directory
        print(server.url)                         # redis://127.0.0.1:PORT/0
    server = redis_server.start(appendonly=True)  # append-only file, fsync every second
    server.restart()                              # same port and directory: the data survives
    server.stop()

``start(tls=TlsFiles(cert, key, ca))`` serves TLS only (the URL is ``rediss://``), and
``start(cluster=True)`` starts a node with ``cluster-enabled yes``; ``start_cluster(3)``
starts three such nodes, gives each a third of the slots and joins them (its URL is
``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/``). The server is stopped with
the process that started it (Linux), so a killed test run leaves none behind.

``redis-server`` is taken from ``PATH``. When it is missing and this process runs as
root (CI on Debian), it is installed with ``apt-get install -y redis-server``; otherwise
:class:`RedisServerUnavailable` says how to get one.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "RedisCluster",
    "RedisServer",
    "RedisServerUnavailable",
    "TlsFiles",
    "find_binary",
    "start",
    "start_cluster",
]

#: How long a server may take to answer PING after it was started.
START_TIMEOUT = 15.0
#: Serialises installs by concurrent test processes (two pytest-xdist workers, say).
_INSTALL_LOCK = Path(tempfile.gettempdir()) / "stem-redis-server-install.lock"


class RedisServerUnavailable(RuntimeError):
    """No ``redis-server`` can be found or installed, or it would not start."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS server: its certificate and key, and the CA that signed clients'.

    With ``auth_clients`` False, clients need no certificate of their own.
    """

    cert: str
    key: str
    ca: str
    auth_clients: bool = False


def make_certificates(directory: Path, *, auth_clients: bool = False) -> TlsFiles:
    """A throw-away CA and, signed by it, a certificate for a server at 127.0.0.1 and one
    for a client (``client.pem``, ``client.key`` in ``directory``), made with the openssl
    command (EC keys: quick to make), valid for a day.

    Raises:
        RedisServerUnavailable: the openssl command is missing.
    """
    if shutil.which("openssl") is None:
        raise RedisServerUnavailable("the openssl command is needed to make test certificates")

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
    return TlsFiles(
        cert=str(directory / "server.pem"),
        key=str(directory / "server.key"),
        ca=str(directory / "ca.pem"),
        auth_clients=auth_clients,
    )


def find_binary(*, install: bool = True) -> str:
    """The path of ``redis-server``, installing Debian's package when root may do so."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    if not install or os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RedisServerUnavailable(
            "redis-server is not installed: install it (Debian/Ubuntu: sudo apt-get install "
            "redis-server; macOS: brew install redis), or point the tests at a server with "
            "STEM_TEST_REDIS_URL=redis://HOST:PORT/0"
        )
    with open(_INSTALL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing it right now
        found = shutil.which("redis-server")
        if found is not None:
            return found
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RedisServerUnavailable(
                    f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}"
                )
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RedisServerUnavailable("apt-get installed redis-server, but it is not on PATH")
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may take it before us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: A cluster node also listens on its port + 10000 (the cluster bus), so its port must
#: be at most this; the kernel's free ports go up to 60999.
MAX_CLUSTER_PORT = 55535


def free_cluster_port() -> int:
    """A free port at most MAX_CLUSTER_PORT whose bus port (+ 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port > MAX_CLUSTER_PORT:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RedisServerUnavailable("found no free port pair (port, port + 10000) for a cluster node")


class RedisServer:
    """A running ``redis-server``; use :func:`start` to make one.

    Attributes:
        port: the loopback port it listens on (TLS only, when started with ``tls``).
        url: ``redis://127.0.0.1:PORT/0``, or ``rediss://...`` with TLS.
        directory: its working directory (the append-only file, its log ``redis.log``).
    """

    def __init__(
        self,
        binary: str,
        port: int,
        directory: Path,
        *,
        appendonly: bool,
        tls: TlsFiles | None,
        cluster: bool,
        owns_directory: bool,
    ) -> None:
        self.binary = binary
        self.port = port
        self.directory = directory
        self.appendonly = appendonly
        self.tls = tls
        self.cluster = cluster
        self._owns_directory = owns_directory
        self._process: subprocess.Popen[bytes] | None = None
        scheme = "rediss" if tls else "redis"
        self.url = f"{scheme}://127.0.0.1:{port}/0"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.url!r}, {state})"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        cmd = [self.binary, "--bind", "127.0.0.1", "--dir", str(self.directory)]
        cmd += ["--daemonize", "no", "--save", "", "--logfile", "redis.log"]
        cmd += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            cmd += ["--appendfsync", "everysec"]
        if self.tls is not None:
            cmd += ["--port", "0", "--tls-port", str(self.port)]
            cmd += ["--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key]
            cmd += ["--tls-ca-cert-file", self.tls.ca]
            cmd += ["--tls-auth-clients", "yes" if self.tls.auth_clients else "no"]
        else:
            cmd += ["--port", str(self.port)]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        return cmd

    def _launch(self) -> None:
        self._process = subprocess.Popen(
            self._command(),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers_ping():
            if self._process.poll() is not None:
                raise RedisServerUnavailable(
                    f"redis-server exited with {self._process.returncode} on port {self.port}:"
                    f" {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self._terminate()
                raise RedisServerUnavailable(
                    f"redis-server did not answer PING on port {self.port} within "
                    f"{START_TIMEOUT:g} s: {self.log_tail()}"
                )
            time.sleep(0.01)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                if self.tls is None:
                    return _ping(raw)
                context = ssl.create_default_context(cafile=self.tls.ca)
                context.check_hostname = False
                if self.tls.auth_clients:
                    context.load_cert_chain(self.tls.cert, self.tls.key)
                with context.wrap_socket(raw) as conn:
                    return _ping(conn)
        except (OSError, ssl.SSLError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log, for error messages."""
        try:
            text = (self.directory / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # redis-server shuts down cleanly on SIGTERM (fsyncs the AOF)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop the server and start it again on the same port and directory.

        With ``appendonly`` the data written before survives (as it would a real restart).
        """
        self._terminate()
        self._launch()

    def kill(self) -> None:
        """Stop the server at once (SIGKILL): what a crash looks like to its clients."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the server and remove its directory (if :func:`start` made it)."""
        self._terminate()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    port: int | None = None,
    *,
    appendonly: bool = False,
    tls: TlsFiles | None = None,
    cluster: bool = False,
) -> RedisServer:
    """Start ``redis-server`` on ``port`` (a free one if None) and wait until it answers PING.

    Args:
        port: the loopback port; None picks a free one (and retries if it was taken).
        appendonly: keep an append-only file (``appendfsync everysec``), so the data
            survives :meth:`RedisServer.restart`; off by default (no persistence at all).
        tls: serve TLS only, with these files.
        cluster: start the node with ``cluster-enabled yes``.

    Raises:
        RedisServerUnavailable: no ``redis-server`` could be found or installed, or it
            did not start (the message quotes its log).
    """
    binary = find_binary()
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        directory = Path(tempfile.mkdtemp(prefix="stem-redis-"))
        server = RedisServer(
            binary,
            port if port is not None else (free_cluster_port() if cluster else free_port()),
            directory,
            appendonly=appendonly,
            tls=tls,
            cluster=cluster,
            owns_directory=True,
        )
        try:
            server._launch()
        except RedisServerUnavailable:
            server.stop()
            if attempt == attempts - 1:
                raise
            continue  # the free port was taken meanwhile: try another
        return server
    raise AssertionError("unreachable")  # pragma: no cover


class RedisCluster:
    """Nodes of a Redis Cluster started by :func:`start_cluster` (primaries, no replicas).

    Attributes:
        servers: the nodes, in slot order (the first holds slot 0).
        url: ``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,.../`` naming every node.
    """

    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in servers) + "/"

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_cluster(nodes: int = 3) -> RedisCluster:
    """Start ``nodes`` cluster nodes, split the 16384 slots evenly, join them, and wait
    until every node says ``cluster_state:ok``.

    Raises:
        RedisServerUnavailable: as :func:`start`, or the cluster did not form in time.
    """
    servers: list[RedisServer] = []
    try:
        for _ in range(nodes):
            servers.append(start(cluster=True))
        for i, server in enumerate(servers):
            first, last = 16384 * i // nodes, 16384 * (i + 1) // nodes - 1
            _command(server.port, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
        for server in servers[1:]:
            _command(servers[0].port, "CLUSTER", "MEET", "127.0.0.1", str(server.port))
        deadline = time.monotonic() + START_TIMEOUT
        while not all(b"cluster_state:ok" in _command(s.port, "CLUSTER", "INFO") for s in servers):
            if time.monotonic() > deadline:
                raise RedisServerUnavailable(
                    f"the cluster of ports {[s.port for s in servers]} did not reach "
                    f"cluster_state:ok within {START_TIMEOUT:g} s: {servers[0].log_tail()}"
                )
            time.sleep(0.05)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return RedisCluster(servers)


def _command(port: int, *args: str) -> bytes:
    """Send one command to 127.0.0.1:port and return its raw reply (bulk or simple)."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request.encode())
        reply = b""
        while True:
            reply += conn.recv(65536)
            if reply.startswith(b"-"):
                raise RedisServerUnavailable(f"{' '.join(args)} on port {port}: {reply!r}")
            if reply.startswith(b"+") and reply.endswith(b"\r\n"):
                return reply
            if reply.startswith(b"$"):
                size, _, rest = reply[1:].partition(b"\r\n")
                if len(rest) >= int(size) + 2:
                    return rest[: int(size)]


def _ping(conn: socket.socket) -> bool:
    conn.sendall(b"PING\r\n")
    return conn.recv(64).startswith(b"+PONG")


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the process that started us dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


if __name__ == "__main__":  # pragma: no cover - a manual check
    with start() as running:
        print(running.url, "up; stopping")
