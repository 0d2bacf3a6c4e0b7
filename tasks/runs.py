"""Run folders: one per pipeline run under ``STEELQC_HOME/runs``, with a ``state.json`` used to resume."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from steelqc.tasks.fileio import atomic_write

STATE_FILE = "state.json"


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_state(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the run's state (atomic write)."""
    state = {**read_state(run_dir), **fields, "updated": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write(run_dir / STATE_FILE, lambda tmp: tmp.write_text(json.dumps(state, indent=2, default=str)))
    return state


def find_resumable(runs_dir: Path, fingerprint: str, config_fingerprint: str) -> Path | None:
    """The latest unfinished training run on the same data (fingerprint) with the same settings."""
    if not runs_dir.is_dir():
        return None
    candidates = []
    for run_dir in runs_dir.iterdir():
        state = read_state(run_dir)
        if (
            state.get("kind") == "train"
            and state.get("status") != "finished"
            and state.get("fingerprint") == fingerprint
            and state.get("config_fingerprint") == config_fingerprint
        ):
            candidates.append((state.get("created", ""), run_dir))
    return max(candidates)[1] if candidates else None


def code_version() -> str:
    """The git commit of the code (``+dirty`` when modified), else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"steelqc {version('steelqc')}"
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"
