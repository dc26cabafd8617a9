"""A non-editable install runs: the built wheel carries every Lua script and serves."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from pathlib import Path

import pytest

from holdsvc.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_built_wheel_installs_and_serves(tmp_path: Path) -> None:
    # Built from a copy: an in-tree build leaves build/ behind in the checkout.
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                 "holdsvc-data", ".*_cache", "*.sqlite3*"),
    )  # fmt: skip
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(src)],
        check=True, timeout=120,
    )  # fmt: skip
    [wheel] = wheels.glob("holdsvc-*.whl")
    packed = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".lua")}
    assert {f"holdsvc/lua/{p.name}" for p in (ROOT / "lua").glob("*.lua")} == packed

    # The dependencies come from this interpreter's site-packages; holdsvc only from the wheel.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    where = subprocess.run(
        [str(python), "-c", "import holdsvc.seats.scripts as s; print(s.LUA_DIR)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(env_dir), where

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLDSVC_")}
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [str(env_dir / "bin" / "holdsvc"), "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "data")],
            cwd=tmp_path, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.2)
        output = (tmp_path / "serve.log").read_text(errors="replace")
        assert status == 200, output
        assert f"Lua scripts from {where}" in output, output
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
