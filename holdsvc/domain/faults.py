"""Crash points for fault tests: ``HOLDSVC_FAULT=<point>`` kills the process there, as a power
cut or an OOM kill would, so tests can prove what survives each instant of a payment."""

from __future__ import annotations

import os
import signal

POINTS = ("before_charge", "after_charge", "after_confirm", "after_commit")


def crash_point(fault: str, point: str) -> None:
    if fault == point:
        os.kill(os.getpid(), signal.SIGKILL)
