"""Start the dashboard: ``streamlit run`` on :mod:`steelqc.dashboard.app` with the project's settings environment
(``steelqc dashboard [--port N]``).

Streamlit has no login, so the default address is loopback (127.0.0.1); put a reverse proxy with authentication in
front of it to share it (README, "Inspection dashboard").
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from steelqc.tasks.config import DEFAULT_MAX_IMAGE_BYTES

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().with_name("app.py")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def command(port: int = 8501, host: str = "127.0.0.1") -> list[str]:
    """The ``streamlit run`` command line of the dashboard: headless, no usage statistics, no file watcher, uploads
    no larger than ingest reads."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(int(port)),
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--server.maxUploadSize", str(max(1, DEFAULT_MAX_IMAGE_BYTES // 2**20)),  # MB; the app checks the setting
        "--global.developmentMode", "false",
    ]  # fmt: skip


def environment(home: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the dashboard process: ``base`` (default this process's), ``STEELQC_HOME`` set to
    ``home`` (made absolute) when given, and no Albumentations update check."""
    env = dict(os.environ if base is None else base)
    if home is not None:
        env["STEELQC_HOME"] = str(Path(home).resolve())
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def run(port: int = 8501, host: str = "127.0.0.1", home: Path | None = None) -> int:
    """Serve the dashboard at ``http://host:port`` until interrupted; returns Streamlit's exit status (0 after
    Ctrl-C or SIGTERM, which stop Streamlit too: no server outlives this call).

    ``home``: the ``STEELQC_HOME`` to read (default: the environment's, else ``.steelqc``). A non-loopback ``host``
    is allowed but logged as a warning: the dashboard has no authentication of its own.
    """
    if host not in LOOPBACK:
        log.warning("the dashboard has no login; %s exposes it beyond this machine (use a reverse proxy)", host)
    argv = command(port, host)
    log.info("dashboard on http://%s:%d", host, port)
    proc = subprocess.Popen(argv, env=environment(home), stdout=sys.stderr)  # stdout holds only the CLI summary
    previous = _on_sigterm(lambda *_: proc.terminate())
    try:
        proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches Streamlit too (same process group): _stop lets it finish
        pass
    finally:
        code = _stop(proc)
        _on_sigterm(previous)
    return code


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM (main thread only; elsewhere a no-op); returns the previous one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """Stop Streamlit if it still runs (SIGTERM, then SIGKILL after ``timeout_s``); 0 when it was stopped."""
    if proc.poll() is not None:
        return 0 if proc.returncode in (-signal.SIGTERM, -signal.SIGINT) else proc.returncode
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return 0
