"""What `steelqc gc` may remove under ``STEELQC_HOME``, and removing it (README "Keeping it running").

Only these grow without bound, and only these are touched:

* ``runs/*``: run folders (training, ingest, evaluate). The newest ``gc.keep_runs`` stay, and so does every folder
  a registered version needs (``needed``: its training run's folder, which its export and champion comparison
  read), whatever its age.
* ``monitoring/runs/*``: drift-monitor run folders (each run's report is also in its MLflow run); the newest
  ``gc.keep_monitor_runs`` stay.
* ``decisions/YYYY-MM-DD.jsonl``: predict's decision log; days older than ``gc.decisions_days`` go (0: never).
* ``servers/*.log``: a log over ``gc.logs_max_bytes`` is cut to its newest half, from a line start.
* the image cache's disk tier: least recently used entries over ``cache.max_bytes_disk`` (the cache evicts them
  itself while it runs; this catches a lowered limit).

Nothing changed within ``gc.min_age_hours`` is removed (a run in progress). Symlinks are removed as links, never
followed. MLflow's store and artifacts, Prefect's database, exports, the split ledger, the review queue's labelled
records and the reviewed source are never touched here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from steelqc.tasks.config import Settings
from steelqc.tasks.data.cache import ENTRY_SUFFIX

log = logging.getLogger(__name__)

DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")
RUN_STAMP = re.compile(r"-(\d{8}-\d{6})-")
"""The UTC creation stamp in a run folder's name (``train-20261204-235331-fff786``)."""


@dataclass(frozen=True)
class Removal:
    """One thing gc removes (``action`` remove) or cuts (``action`` trim), with the bytes it frees and why."""

    path: str
    kind: str
    bytes: int
    reason: str
    action: str = "remove"


@dataclass
class GcPlan:
    """What gc removes, what it keeps on purpose (``kept``: path -> why) and whether it was applied."""

    removals: list[Removal] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    applied: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def to_dict(self) -> dict:
        """The JSON of `steelqc gc`."""
        by_kind: dict[str, dict[str, int]] = {}
        for r in self.removals:
            entry = by_kind.setdefault(r.kind, {"items": 0, "bytes": 0})
            entry["items"] += 1
            entry["bytes"] += r.bytes
        return {
            "dry_run": not self.applied,
            "freed_bytes": self.freed_bytes,
            "by_kind": by_kind,
            "removed": [asdict(r) for r in self.removals],
            "kept": self.kept,
            "errors": self.errors,
        }


def tree_bytes(path: Path) -> int:
    """Bytes of a file or folder tree (links counted as links, never followed)."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in [*files, *dirs]:
            try:
                item = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if not stat.S_ISDIR(item.st_mode):
                total += item.st_size
    return total


def last_change(path: Path) -> float:
    """The newest modification time of a folder, its direct entries and ``state.json``'s (a run in progress)."""
    try:
        times = [path.lstat().st_mtime]
        if path.is_dir() and not path.is_symlink():
            times += [entry.stat(follow_symlinks=False).st_mtime for entry in os.scandir(path)]
    except OSError:
        return time.time()  # unreadable: counts as fresh, never removed
    return max(times)


def created(path: Path) -> str:
    """When a run folder was made, as ``YYYYmmdd-HHMMSS``: the stamp in its name, else its modification time."""
    match = RUN_STAMP.search(path.name)
    if match:
        return match[1]
    try:
        return datetime.fromtimestamp(path.lstat().st_mtime, UTC).strftime("%Y%m%d-%H%M%S")
    except OSError:
        return "99999999-999999"  # vanished meanwhile: sorts as newest, so it is not planned for removal


def _folders(root: Path) -> list[Path]:
    """Entries of ``root`` (folders and links), newest first by creation (a resumed old run stays old)."""
    if not root.is_dir():
        return []
    return sorted(root.iterdir(), key=lambda p: (created(p), p.name), reverse=True)


def old_folders(
    root: Path, kind: str, keep: int, needed: Mapping[str, str], min_age_s: float, now: float, plan: GcPlan
) -> None:
    """Plan the removal of ``root``'s folders beyond the newest ``keep``, except those ``needed`` (by folder name:
    why) and those changed within ``min_age_s``."""
    for rank, folder in enumerate(_folders(root)):
        if folder.name in needed:
            plan.kept[str(folder)] = needed[folder.name]
        elif rank < keep:
            continue
        elif now - last_change(folder) < min_age_s:
            plan.kept[str(folder)] = f"changed within the last {min_age_s / 3600:g} h"
        else:
            plan.removals.append(Removal(str(folder), kind, tree_bytes(folder), f"older than the newest {keep}"))


def old_decision_days(root: Path, days: int, today: datetime, plan: GcPlan) -> None:
    """Plan the removal of decision-log days (``YYYY-MM-DD.jsonl``) older than ``days`` (0: keep all)."""
    if days <= 0 or not root.is_dir():
        return
    cutoff = (today - timedelta(days=days)).date()
    for path in sorted(root.iterdir()):
        match = DAY_FILE.match(path.name)
        if match is None or not path.is_file() or path.is_symlink():
            continue
        if datetime.strptime(match[1], "%Y-%m-%d").date() < cutoff:
            plan.removals.append(Removal(str(path), "decisions", tree_bytes(path), f"a day older than {days} days"))


def oversized_logs(root: Path, max_bytes: int, plan: GcPlan) -> None:
    """Plan cutting each ``*.log`` over ``max_bytes`` to its newest half (0: never)."""
    if max_bytes <= 0 or not root.is_dir():
        return
    for path in sorted(root.glob("*.log")):
        size = tree_bytes(path)
        if path.is_file() and not path.is_symlink() and size > max_bytes:
            reason = f"over logs_max_bytes ({max_bytes}): cut to its newest {max_bytes // 2} bytes"
            plan.removals.append(Removal(str(path), "log", size - max_bytes // 2, reason, "trim"))


def cache_excess(root: Path, max_bytes: int, plan: GcPlan) -> None:
    """Plan the removal of the image cache's least recently used entries above ``max_bytes``."""
    if not root.is_dir():
        return
    entries = []
    for path in root.glob(f"??/*{ENTRY_SUFFIX}"):
        try:
            st = path.lstat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        plan.removals.append(Removal(str(path), "cache", size, f"over cache.max_bytes_disk ({max_bytes})"))
        total -= size


def plan_gc(settings: Settings, needed_runs: Mapping[str, str], now: float | None = None) -> GcPlan:
    """Everything gc would remove under ``settings.home`` (nothing is touched); ``needed_runs``: run folder name ->
    the registered version that needs it."""
    now = time.time() if now is None else now
    gc, plan = settings.gc, GcPlan()
    min_age = gc.min_age_hours * 3600
    old_folders(settings.runs_dir, "run", gc.keep_runs, needed_runs, min_age, now, plan)
    old_folders(settings.home / "monitoring" / "runs", "monitor-run", gc.keep_monitor_runs, {}, min_age, now, plan)
    decisions = settings.decisions_dir or settings.home / "decisions"
    old_decision_days(decisions, gc.decisions_days, datetime.fromtimestamp(now, UTC), plan)
    oversized_logs(settings.home / "servers", gc.logs_max_bytes, plan)
    cache_excess(settings.cache.root(settings.home), settings.cache.max_bytes_disk, plan)
    return plan


def trim_log(path: Path, keep_bytes: int) -> None:
    """Keep the last ``keep_bytes`` of a log (from a line start); a server appending to it goes on at the end."""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - keep_bytes))
        tail = fh.read()
    cut = tail.find(b"\n")
    tail = tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail
    with path.open("r+b") as fh:
        fh.truncate(0)
        fh.write(b"--- cut by steelqc gc; older lines removed\n" + tail)


def remove(path: Path) -> None:
    """Remove a file, a link (never its target) or a folder tree (links inside removed as links)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def apply_plan(plan: GcPlan, keep_log_bytes: int, only_under: Iterable[Path]) -> GcPlan:
    """Carry out ``plan``: only paths under ``only_under`` (STEELQC_HOME and the cache folder) are touched; an
    error is recorded and the rest goes on."""
    roots = [Path(os.path.abspath(r)) for r in only_under]
    for item in plan.removals:
        path = Path(os.path.abspath(item.path))
        if not any(path != root and path.is_relative_to(root) for root in roots):
            plan.errors.append(f"{item.path}: outside {', '.join(map(str, roots))}, not touched")
            continue
        try:
            trim_log(path, keep_log_bytes) if item.action == "trim" else remove(path)
        except OSError as exc:
            plan.errors.append(f"{item.path}: {exc.strerror or exc}")
            log.warning("gc: cannot %s %s (%s)", item.action, item.path, exc)
    plan.applied = True
    return plan
