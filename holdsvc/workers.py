"""`holdsvc serve --workers N`: N API processes on one port and one persister, supervised.

Each API process is a `holdsvc serve` of its own with an SO_REUSEPORT listener on the same
host and port, so the kernel spreads connections over them (a socket shared from a pre-fork
spreads them unevenly). They run with `--no-persister`; one `holdsvc persister` consumes the
expiry events for all of them. Every process shares one Redis and one SQL database: every
move is a compare-and-set, so they need nothing else from each other.

The supervisor starts the embedded Redis itself (when no --redis-url is given), so a worker
that dies takes nothing down with it. It restarts a child that exits, and on SIGTERM or SIGINT
it stops the children (each stops gracefully: requests in flight finish, the SQL writer
commits what it has), then the Redis. Each child dies with the supervisor even if the
supervisor is killed (PR_SET_PDEATHSIG).

Settings reach the children as HOLDSVC_* variables, so a child runs with exactly the
supervisor's settings, whichever way they were given.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from holdsvc.embedded_redis import (
    EmbeddedRedis,
    Keeper,
    Revival,
    die_with_parent,
    find_binary,
    forget_url,
    record_url,
    running_url,
)
from holdsvc.settings import ENV_PREFIX, Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
# A child that dies sooner than this after its start is restarted after a growing pause, so
# one that cannot start (a port taken, a database refused) does not spin.
STEADY_AFTER_S = 10.0
MAX_BACKOFF_S = 5.0


def child_env(settings: Settings, **changes: object) -> dict[str, str]:
    """The environment that gives a child process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for f in dataclasses.fields(settings):
        value = changes.get(f.name, getattr(settings, f.name))
        if value is not None:
            env[ENV_PREFIX + f.name.upper()] = str(value)
    return env


@dataclasses.dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    died_at: float | None = None
    delay: float = 0.0
    backoff: float = 0.5
    restarts: int = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )
        self.started = time.monotonic()


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stopping = False
        self._redis: EmbeddedRedis | None = None
        self._keeper: Keeper | None = None
        self.gave_up: str | None = None

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _redis_url(self) -> str:
        s = self.settings
        if s.redis_url is not None:
            return s.redis_url
        running = running_url(s.data_dir)
        if running is not None:
            return running  # another serve of this data dir runs it: share it
        self._redis = EmbeddedRedis(
            s.data_dir / "redis", binary=find_binary(s.redis_server), fsync=s.redis_fsync
        )
        self._redis.start()
        self._keeper = Keeper(self._redis, s.redis_restarts)
        record_url(s.data_dir, self._redis.url)
        return self._redis.url

    def _children(self, redis_url: str) -> list[_Child]:
        s = self.settings
        python = [sys.executable, "-m", "holdsvc"]
        children = []
        for n in range(1, s.workers + 1):
            # One demo flight, made once: only the first worker is asked to.
            demo = s.demo and n == 1
            env = child_env(
                s, workers=1, worker=n, redis_url=redis_url, persister_enabled=False, demo=demo
            )
            children.append(_Child(f"worker {n}", [*python, "serve"], env))
        children.append(
            _Child("persister", [*python, "persister"], child_env(s, redis_url=redis_url))
        )
        return children

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        s = self.settings
        Path(s.data_dir).mkdir(parents=True, exist_ok=True)
        url = self._redis_url()
        children = self._children(url)
        try:
            for child in children:
                child.start()
            print(
                f"holdsvc supervising {s.workers} API processes on http://{s.host}:{s.port}"
                " and one persister",
                flush=True,
            )
            while not self._stopping:
                time.sleep(0.1)
                self._keep_redis()
                for child in children:
                    self._keep(child)
        finally:
            self._stop_children(children)
            if self._redis is not None:
                forget_url(s.data_dir, self._redis.url)
                self._redis.stop()
        return 1 if self.gave_up else 0

    def _keep_redis(self) -> None:
        """Start the embedded Redis again if it died; the workers restore their flights into
        it (the hold script refuses a marker from the earlier run until they have)."""
        if self._keeper is None or self._stopping:
            return
        if self._keeper.check() is Revival.GAVE_UP:
            self.gave_up = self._keeper.gave_up
            self._stopping = True

    def _keep(self, child: _Child) -> None:
        """Restart a child that exited, after a pause if it had only just started."""
        assert child.process is not None
        code = child.process.poll()
        if code is None or self._stopping:
            return
        now = time.monotonic()
        if child.died_at is None:
            child.died_at = now
            quick = now - child.started < STEADY_AFTER_S
            child.delay = child.backoff if quick else 0.0
            child.backoff = min(child.backoff * 2, MAX_BACKOFF_S) if quick else 0.5
            log.warning("%s (pid %d) exited with %s: starting it again in %.1f s", child.name,
                        child.process.pid, code, child.delay)  # fmt: skip
        if now - child.died_at < child.delay:
            return
        child.died_at = None
        child.restarts += 1
        child.start()

    def _stop_children(self, children: list[_Child]) -> None:
        running = [c.process for c in children if c.process is not None]
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("pid %d did not stop within %.0f s: killing it", proc.pid,
                          STOP_TIMEOUT_S)  # fmt: skip
                proc.kill()
                proc.wait()
