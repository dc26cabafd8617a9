"""The one typed settings object: CLI flags override ``HOLDSVC_*`` variables override defaults.

Nothing else in holdsvc reads ``os.environ``; everything gets a :class:`Settings`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "HOLDSVC_"

# The admin commands' exit codes, listed by `holdsvc --help`.
EXIT_DIFFERENCES, EXIT_FAILED, EXIT_NO_REDIS, EXIT_NO_SERVICE = 1, 2, 3, 4
EXIT_CODES = (
    (0, "done"),
    (EXIT_DIFFERENCES, "audit found differences"),
    (EXIT_FAILED, "bad usage, or the command failed"),
    (EXIT_NO_REDIS, "Redis does not answer (what needs only SQL was still printed)"),
    (EXIT_NO_SERVICE, "no running holdsvc: its embedded Redis is not running (likewise)"),
)


def ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    # None: start an embedded Redis-compatible server in data_dir and stop it on exit.
    redis_url: str | None = None
    # redis_url names any node of a Redis Cluster: holds are routed by slot to the primary
    # that serves each flight, and expiry events are read from every primary.
    redis_cluster: bool = False
    # Which server binary the embedded mode runs: "auto" (the pip-shipped Valkey, else a
    # redis-server or valkey-server on PATH), "bundled" (only the pip-shipped one), "path"
    # (only one on PATH), or a path.
    redis_server: str = "auto"
    # The embedded server's AOF fsync: "everysec" (a crash loses at most the last second of
    # holds, which never took money) or "always" (none, at a cost bench/RESULTS.md measures).
    redis_fsync: str = "everysec"
    data_dir: Path = Path("holdsvc-data")
    # None: <data_dir>/holdsvc.sqlite3. A path: that SQLite file. postgresql://user[:password]
    # @host:port/dbname: a PostgreSQL database (asyncpg), which many processes and machines
    # may share.
    db: str | None = None
    # Ten minutes, as the seed airline system held seats.
    hold_ttl: float = 600.0
    # How long a started payment keeps the hold alive.
    payment_window: float = 120.0
    # A gateway call slower than this is abandoned (and, for a charge, voided by recovery,
    # which waits this long after a payment's last change before touching it).
    gateway_timeout: float = 30.0
    # An Idempotency-Key claim not renewed for this long is taken over by its retry: its
    # process renews it every 0.5 s while the request runs, so a request that ended without
    # an answer kept (a 5xx), or whose process died, leaves its key retryable within this.
    takeover_after: float = 1.5
    max_seats_per_booking: int = 10
    # Seats one user_id may hold or have booked on one flight, checked in the hold script
    # (0: no limit).
    max_seats_per_user: int = 10
    # A hold's longest life, from its creation, however often it is extended, and the most
    # extensions it may have (pretix's bug #1575 let a hold renew forever).
    max_hold: float = 1800.0
    # Hold attempts a second per client (its API key, or its address without keys), a token
    # bucket in Redis so it holds across processes; over it, 429 with Retry-After. 0: off,
    # so benchmarks and tests are never throttled by surprise.
    hold_rate: float = 0.0
    max_extensions: int = 5
    # Entries each flight's seat stream keeps, about (what a client reconnecting with
    # Last-Event-ID can still be replayed; older positions get a fresh snapshot). Each entry
    # is one hold's, confirm's or release's seats, about 22 bytes (216 kB a flight at 10,000,
    # measured with MEMORY USAGE). 0: no stream.
    seat_stream_length: int = 10_000
    # A comment on every open seat stream this often, so proxies keep idle ones open.
    sse_keepalive: float = 15.0
    # Off only in tests and for a standalone persister elsewhere: holds then expire in Redis
    # but nothing here records EXPIRED.
    persister_enabled: bool = True
    # Expiry events are fire-and-forget; the sweeper makes expiry certain. Seconds, 0 = off.
    sweep_interval: float = 0.5
    # A hold still live in SQL this long after its deadline is expired from SQL's side, for
    # holds whose Redis keys and deadline entry were lost with Redis data.
    reconcile_grace: float = 2.0
    # Refuse to start when expiry events are off and cannot be turned on.
    require_keyspace_events: bool = False
    # Kept at least 24 h, as Stripe and pretix keep theirs.
    idempotency_ttl: float = 86400.0
    max_body_bytes: int = 64 * 1024
    # None: <data_dir>/mock-gateway.sqlite3, the mock payment provider's own ledger.
    gateway_ledger: Path | None = None
    # Fault injection for crash tests (HOLDSVC_FAULT only, no flag): the named point of a pay
    # kills the process with SIGKILL. One of holdsvc.faults.POINTS, or "" for none.
    fault: str = ""
    log_level: str = "INFO"
    # "text", or "json": one JSON object a line.
    log_format: str = "text"
    demo: bool = False
    # API processes `serve` runs on its port (each with its own SO_REUSEPORT listener), plus
    # one persister, under one supervisor (holdsvc/workers.py). 1: serve is the API itself.
    # The embedded Redis is started again when it dies, at most this many times within a
    # minute; past that `serve` exits 1, for its own supervisor (systemd, a container
    # runtime) to act. 0: never started again.
    redis_restarts: int = 5
    workers: int = 1
    # Set by the supervisor in each API process it starts (HOLDSVC_WORKER): its number, from
    # 1; 0 for a serve that is not one of several.
    worker: int = 0
    # API keys, one "name role secret" a line (holdsvc.domain.access). With none (no file,
    # no HOLDSVC_API_KEY) the service serves open, and only on a loopback address.
    api_keys_file: Path | None = None
    # One more key, in the file's line format, from HOLDSVC_API_KEY only (no flag: a flag
    # shows in ps). Never in a repr, so never in a log line or a traceback.
    api_key: str | None = field(default=None, repr=False)

    @property
    def is_postgres(self) -> bool:
        return self.db is not None and self.db.startswith(("postgresql://", "postgres://"))

    @property
    def db_path(self) -> Path:
        """The SQLite file (not for a PostgreSQL store)."""
        assert not self.is_postgres
        return Path(self.db) if self.db is not None else self.data_dir / "holdsvc.sqlite3"

    @property
    def db_target(self) -> str:
        """What the store opens: the PostgreSQL URL, or the SQLite file's path."""
        return self.db if self.is_postgres and self.db else str(self.db_path)

    @property
    def db_where(self) -> str:
        """The database, for messages: a URL without its password, or the file."""
        if not self.is_postgres:
            return str(self.db_path)
        head, at, tail = self.db_target.rpartition("@")
        scheme, _, user = head.partition("://")
        return f"{scheme}://{user.partition(':')[0]}@{tail}" if at else self.db_target

    @property
    def gateway_ledger_path(self) -> Path:
        if self.gateway_ledger is not None:
            return self.gateway_ledger
        return self.data_dir / "mock-gateway.sqlite3"

    # Settings are given in seconds; Redis, SQL and the scripts count milliseconds.
    @property
    def max_hold_ms(self) -> int:
        return ms(self.max_hold)

    @property
    def hold_ttl_ms(self) -> int:
        return max(1, ms(self.hold_ttl))

    @property
    def grace_ms(self) -> int:
        return ms(self.reconcile_grace)

    @property
    def payment_window_ms(self) -> int:
        return max(1, ms(self.payment_window))

    @property
    def gateway_timeout_ms(self) -> int:
        return ms(self.gateway_timeout)

    @property
    def takeover_after_ms(self) -> int:
        return ms(self.takeover_after)

    @property
    def idempotency_ttl_ms(self) -> int:
        return ms(self.idempotency_ttl)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env_and_argv(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> tuple[str, Settings, argparse.Namespace]:
        """Parse ``holdsvc <command> [flags]``: the command, the settings, and the command's
        own arguments (those of ``flights create``, say)."""
        parser = build_parser()
        args = parser.parse_args(argv)
        values = _from_env(os.environ if env is None else env, parser)
        for f in dataclasses.fields(cls):
            given = getattr(args, f.name, None)
            if given is not None:
                values[f.name] = given
        try:
            settings = cls(**values)
            settings.validate()
        except ValueError as exc:
            parser.error(str(exc))
        command = args.command + (f" {args.action}" if getattr(args, "action", None) else "")
        return command, settings, args

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if self.hold_ttl <= 0 or self.payment_window <= 0:
            raise ValueError("hold-ttl and payment-window must be positive")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(
                f"log-level must be DEBUG, INFO, WARNING or ERROR, not {self.log_level!r}"
            )
        if self.redis_cluster and self.redis_url is None:
            raise ValueError("redis-cluster needs --redis-url naming a node of the cluster")
        if self.redis_url is not None and not self.redis_url.startswith("redis://"):
            raise ValueError(
                f"redis-url must be redis://host:port/db (TLS and unix sockets are not supported"
                f" yet), not {self.redis_url!r}"
            )
        if self.max_body_bytes < 1024:
            raise ValueError("max-body-bytes must be at least 1024")
        if self.idempotency_ttl < 86400:
            raise ValueError("idempotency-ttl must be at least 86400 seconds (24 h)")
        if self.redis_fsync not in ("everysec", "always"):
            raise ValueError(f"redis-fsync must be everysec or always, got {self.redis_fsync!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError("log-format must be text or json")
        if self.gateway_timeout <= 0:
            raise ValueError("gateway-timeout must be positive")
        if self.takeover_after < 1:
            raise ValueError("takeover-after must be at least 1 second (claims renew every 0.5 s)")
        if self.sweep_interval < 0 or self.sweep_interval > 1:
            raise ValueError("sweep-interval must be 0 (off) to 1 second")
        if self.reconcile_grace < 0:
            raise ValueError("reconcile-grace must not be negative")
        from holdsvc.domain.faults import POINTS

        if self.fault and self.fault not in POINTS:
            raise ValueError(f"HOLDSVC_FAULT must be one of {', '.join(POINTS)}")
        if not 1 <= self.max_seats_per_booking <= 100:
            raise ValueError("max-seats-per-booking must be 1..100")
        if self.max_seats_per_user < 0:
            raise ValueError("max-seats-per-user must not be negative (0: no limit)")
        if self.max_hold < self.hold_ttl:
            raise ValueError("max-hold must be at least hold-ttl")
        if self.hold_rate < 0:
            raise ValueError("hold-rate must not be negative (0: off)")
        if not 0 <= self.max_extensions <= 1000:
            raise ValueError("max-extensions must be 0..1000")
        if not 0 <= self.seat_stream_length <= 10_000_000:
            raise ValueError("seat-stream-length must be 0 (off) to 10000000 entries")
        if not 0.05 <= self.sse_keepalive <= 300:
            raise ValueError("sse-keepalive must be 0.05 to 300 seconds")
        if self.redis_restarts < 0:
            raise ValueError("redis-restarts must not be negative")
        if not 1 <= self.workers <= 64:
            raise ValueError("workers must be 1..64")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


_CONVERTERS: dict[str, Any] = {
    "port": int,
    "data_dir": Path,
    "hold_ttl": float,
    "payment_window": float,
    "gateway_timeout": float,
    "takeover_after": float,
    "max_seats_per_booking": int,
    "max_seats_per_user": int,
    "seat_stream_length": int,
    "max_hold": float,
    "max_extensions": int,
    "hold_rate": float,
    "sse_keepalive": float,
    "persister_enabled": _parse_bool,
    "redis_cluster": _parse_bool,
    "sweep_interval": float,
    "reconcile_grace": float,
    "require_keyspace_events": _parse_bool,
    "idempotency_ttl": float,
    "max_body_bytes": int,
    "gateway_ledger": Path,
    "demo": _parse_bool,
    "workers": int,
    "redis_restarts": int,
    "worker": int,
    "api_keys_file": Path,
}


def _from_env(env: Mapping[str, str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is None:
            continue
        try:
            values[f.name] = _CONVERTERS.get(f.name, str)(raw)
        except ValueError as exc:
            parser.error(f"{ENV_PREFIX}{f.name.upper()}: {exc}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="holdsvc",
        description="Seat-hold and booking service. Every flag also reads HOLDSVC_<NAME>.",
        epilog="exit codes of the admin commands: "
        + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES)
        + ". serve and persister exit 1 when they cannot start.",
    )
    parser.add_argument("--version", action="version", version=f"holdsvc {_version()}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (and an embedded Redis if no URL)")
    serve.add_argument(
        "--host",
        help="listen address (default 127.0.0.1); beyond loopback only with API keys",
    )
    serve.add_argument(
        "--api-keys",
        dest="api_keys_file",
        type=Path,
        help="file of API keys, one 'name role secret' a line (role admin or client); with"
        " none, holdsvc serves open, on loopback only",
    )
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        help="API processes on the port (default 1); more than 1 adds one persister process",
    )
    _common(serve)
    _service(serve)
    serve.add_argument(
        "--no-persister",
        dest="persister_enabled",
        action="store_const",
        const=False,
        default=None,
        help="do not consume expiry events here (a `holdsvc persister` process does)",
    )
    serve.add_argument(
        "--demo",
        action="store_const",
        const=True,
        default=None,
        help="create a sample flight if missing and print a curl line to try",
    )
    persister = sub.add_parser(
        "persister",
        help="consume expiry events and sweep lapsed holds, without serving HTTP",
    )
    _common(persister)
    _service(persister)
    status = sub.add_parser("status", help="bookings per state, live holds, Redis and SQL health")
    _common(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    audit = sub.add_parser(
        "audit",
        help="compare booked and held seats in Redis with SQL; exit 1 on any difference",
    )
    _common(audit)
    audit.add_argument("--json", action="store_true", help="one JSON object")
    flights = sub.add_parser("flights", help="create or list flights")
    actions = flights.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a flight")
    _common(create)
    create.add_argument("--flight-number", required=True, help="e.g. AI101")
    create.add_argument("--origin", required=True, help="IATA code, e.g. DEL")
    create.add_argument("--destination", required=True, help="IATA code, e.g. BOM")
    create.add_argument(
        "--departure-time", required=True, help="ISO 8601 with a zone, e.g. 2026-12-01T09:30:00Z"
    )
    create.add_argument("--rows", type=int, required=True)
    create.add_argument("--seat-letters", required=True, help="e.g. ABCDEF")
    create.add_argument("--price", required=True, help='a decimal string, e.g. "4999.00"')
    create.add_argument("--currency", required=True, help="e.g. INR")
    listing = actions.add_parser("list", help="list flights with their free seats")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="a JSON list, as the API's view")
    bookings = sub.add_parser("bookings", help="look up bookings")
    booking_actions = bookings.add_subparsers(dest="action", required=True)
    show = booking_actions.add_parser(
        "show", help="one booking: state, seats, payment and its history"
    )
    _common(show)
    show.add_argument("booking_id", help="the booking's id")
    show.add_argument("--json", action="store_true", help="one JSON object, as the API's view")
    listed = booking_actions.add_parser(
        "list", help="SQL's bookings, newest first (a hold enters SQL at its first money step)"
    )
    _common(listed)
    listed.add_argument("--user", help="only this user's")
    listed.add_argument("--state", help="only in this state, e.g. CONFIRMED")
    listed.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listed.add_argument("--json", action="store_true", help="a JSON list, as the API's view")
    cancel = booking_actions.add_parser(
        "cancel", help="cancel a booking as POST .../cancel/ does; --refund refunds it too"
    )
    _common(cancel)
    cancel.add_argument("booking_id", help="the booking's id")
    cancel.add_argument(
        "--refund", action="store_true", help="then refund its captured payment, once"
    )
    migrate = sub.add_parser(
        "migrate",
        help="bring the database's schema to this version (serve does it at start-up too)",
    )
    _common(migrate)
    return parser


def _service(cmd: argparse.ArgumentParser) -> None:
    """Flags of the processes that run the service's machinery (serve, persister)."""
    cmd.add_argument("--hold-ttl", type=float, help="seconds a hold lasts (default 600)")
    cmd.add_argument("--payment-window", type=float, help="seconds a payment may take")
    cmd.add_argument(
        "--gateway-timeout", type=float, help="seconds a gateway call may take (default 30)"
    )
    cmd.add_argument("--max-seats-per-booking", type=int, help="default 10")
    cmd.add_argument(
        "--max-seats-per-user",
        type=int,
        help="seats one user_id may hold or have booked on a flight (default 10; 0: no limit)",
    )
    cmd.add_argument(
        "--max-hold", type=float, help="seconds a hold may last in all, extended (1800)"
    )
    cmd.add_argument("--max-extensions", type=int, help="extensions a hold may have (5)")
    cmd.add_argument(
        "--hold-rate",
        type=float,
        help="hold attempts a second per client before 429 (default 0: no limit)",
    )
    cmd.add_argument(
        "--seat-stream-length",
        type=int,
        help="entries each flight's live seat stream keeps, about (default 10000; 0: off)",
    )
    cmd.add_argument(
        "--sse-keepalive", type=float, help="seconds between keep-alives on a seat stream (15)"
    )


def _version() -> str:
    try:
        return importlib.metadata.version("holdsvc")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


def _common(cmd: argparse.ArgumentParser) -> None:
    """The flags every command takes, before or after the command's name. Unset ones are
    left out of the namespace (SUPPRESS), so a subcommand's parser never overwrites one given
    before its name with its own default."""

    def add(*names: str, **options: Any) -> None:
        cmd.add_argument(*names, default=argparse.SUPPRESS, **options)

    add("--redis-url", help="use this Redis instead of starting one")
    add(
        "--redis-cluster",
        action="store_const",
        const=True,
        help="--redis-url names a node of a Redis Cluster (HOLDSVC_REDIS_CLUSTER=1)",
    )
    add(
        "--redis-server",
        help="embedded server binary: auto (default: the pip-shipped valkey, else one on"
        " PATH), bundled, path (a redis-server/valkey-server on PATH), or a file",
    )
    add(
        "--redis-fsync",
        choices=("everysec", "always"),
        help="the embedded Redis's AOF fsync (default everysec: a crash may lose the last"
        " second of holds, never a payment)",
    )
    add("--data-dir", type=Path, help="embedded Redis and SQLite live here")
    add(
        "--redis-restarts",
        type=int,
        help="times the embedded Redis is started again within a minute before serve gives up"
        " and exits 1 (default 5; 0 = never)",
    )
    add(
        "--db",
        help="SQLite file (default <data-dir>/holdsvc.sqlite3), or postgresql://user[:password]"
        "@host:port/dbname for a PostgreSQL database several processes and machines share",
    )
    add("--sweep-interval", type=float, help="seconds between expiry sweeps (default 0.5, 0 = off)")
    add(
        "--reconcile-grace",
        type=float,
        help="seconds past its deadline before SQL expires a hold Redis forgot (default 2)",
    )
    add(
        "--require-keyspace-events",
        action="store_const",
        const=True,
        help="fail start-up when Redis expiry events are off and cannot be turned on",
    )
    add("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    add("--log-format", choices=["text", "json"], help="text (default) or json")


__all__ = ["ENV_PREFIX", "Settings", "build_parser"]
