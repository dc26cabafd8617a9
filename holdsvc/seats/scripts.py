"""Loads the Lua scripts of ``lua/`` once, at start-up, and keeps them callable by SHA.

Each script is registered through redis-py's ``AsyncScript``, which runs EVALSHA and, on
NOSCRIPT (a ``SCRIPT FLUSH`` or a restarted Redis), loads the source again and retries.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)


def _lua_dir() -> Path:
    """Where the scripts are installed: ``lua/`` is packaged as ``holdsvc.lua`` (pyproject)."""
    # A directory of data, not code: a namespace package, so its first location is the one.
    spec = importlib.util.find_spec("holdsvc.lua")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # A source tree used without installing it: the scripts are at its top.
    return Path(__file__).resolve().parents[2] / "lua"


LUA_DIR = _lua_dir()
# The files put in front of every script: the helpers they share (Redis has no includes).
# They define only local functions, so a script's line numbers shift but nothing else does.
PRELUDE = ("_clock.lua", "_hold.lua", "_stream.lua")
NAMES = (
    "hold_seats",
    "hold_best",
    "begin_payment",
    "confirm_seats",
    "release_seats",
    "due_holds",
    "restore_seats",
    "index_seats",
    "free_lapsed",
    "seat_snapshot",
    "extend_hold",
    "rate_limit",
)


class ScriptLoadError(RuntimeError):
    """A script file is missing or Redis refused to compile it: start-up must stop."""


class UnknownScriptReply(RuntimeError):
    """A script answered outside its closed set of return codes: a bug, never guessed at."""

    def __init__(self, script: str, reply: object) -> None:
        super().__init__(f"{script}.lua returned {reply!r}, outside its documented codes")


@dataclass(frozen=True, slots=True)
class Scripts:
    hold_seats: AsyncScript
    hold_best: AsyncScript
    begin_payment: AsyncScript
    confirm_seats: AsyncScript
    release_seats: AsyncScript
    due_holds: AsyncScript
    restore_seats: AsyncScript
    index_seats: AsyncScript
    free_lapsed: AsyncScript
    seat_snapshot: AsyncScript
    extend_hold: AsyncScript
    rate_limit: AsyncScript

    def all(self) -> list[AsyncScript]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


async def load_scripts(redis: Redis, lua_dir: Path = LUA_DIR) -> Scripts:
    """Read, register and ``SCRIPT LOAD`` every script; fail naming the file that is broken."""
    registered: dict[str, AsyncScript] = {}
    parts = []
    for name in PRELUDE:
        try:
            parts.append((lua_dir / name).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ScriptLoadError(f"{lua_dir / name}: {exc.strerror or exc}") from exc
    prelude = "".join(parts)
    for name in NAMES:
        path = lua_dir / f"{name}.lua"
        try:
            source = prelude + path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScriptLoadError(f"{path}: {exc.strerror or exc}") from exc
        script = redis.register_script(source)
        try:
            sha = await redis.script_load(source)
        except ResponseError as exc:
            raise ScriptLoadError(f"{path}: Redis refused the script: {exc}") from exc
        sha_text = sha.decode() if isinstance(sha, bytes) else str(sha)
        if sha_text != script.sha:
            raise ScriptLoadError(f"{path}: Redis stored SHA {sha_text}, expected {script.sha}")
        registered[name] = script
    log.info("loaded %d Lua scripts from %s", len(registered), lua_dir)
    return Scripts(**registered)
