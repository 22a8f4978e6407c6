"""The dashboard served by `streamlit run` on a free port, and the headless Chromium that uses it.

Shared by the browser test and the benchmarks that measure what a browser user
waits for. The server listens where .streamlit/config.toml says (loopback) and
is stopped when the block ends; Chromium is Debian's (/usr/bin/chromium),
driven by Playwright, with the background networking that this machine's
closed network would refuse switched off.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_SECONDS = 90


class ServerError(RuntimeError):
    """The dashboard server exited or never answered; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served_dashboard(
    weights: Path | None = None, *, log: Path | None = None, options: Sequence[str] = (), prewarm: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(url, server process) of a fresh dashboard server on `weights` (default: the shipped models).

    `prewarm` starts it as `python dashboard.py` (models load while the server starts) instead of
    `streamlit run dashboard.py`. `options` are more `streamlit run` flags (e.g.
    "--client.showErrorDetails", "full"); the server's output goes to `log` (a temporary file by
    default) and is quoted when the server fails.
    """
    port = free_port()
    launcher = [] if prewarm else ["-m", "streamlit", "run"]
    command = [sys.executable, *launcher, str(REPOSITORY / "dashboard.py"), "--server.headless", "true",
               "--server.port", str(port), "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
               *options]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if weights is not None:
        env["LUNGVIZ_WEIGHTS"] = str(weights)
    log = log or Path(tempfile.mkstemp(suffix=".log")[1])
    with log.open("wb") as output:
        server = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, server, log)
        yield url, server
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServerError(f"streamlit exited with status {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise ServerError(f"streamlit did not answer within {START_SECONDS} s:\n{log.read_text()}")
