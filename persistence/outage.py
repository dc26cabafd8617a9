"""How a dependency that stops answering is logged: one line when it starts failing, one every
STILL_EVERY_S while it goes on (with the count), and one when it works again (with how long it
was down). Before, a 5 s Redis outage logged 58 warnings: one per 503, per sweep round and per
reconnect attempt of the persister."""

from __future__ import annotations

import logging
import time

STILL_EVERY_S = 10.0


class Outage:
    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._since: float | None = None
        self._told = 0.0
        self._failures = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._failures += 1
        if self._since is None:
            self._since = self._told = now
            self._failures = 1
            self._log.warning("%s: failing: %s", self._what, exc)
        elif now - self._told >= STILL_EVERY_S:
            self._told = now
            self._log.warning(
                "%s: still failing after %.0f s (%d failures): %s",
                self._what, now - self._since, self._failures, exc,
            )  # fmt: skip

    def ok(self) -> None:
        if self._since is not None:
            self._log.warning(
                "%s: works again after %.1f s (%d failures)",
                self._what, time.monotonic() - self._since, self._failures,
            )  # fmt: skip
            self._since = None
