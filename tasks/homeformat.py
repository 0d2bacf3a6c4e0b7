"""The format of ``STEELQC_HOME``'s own files, so a home written by another steelqc is migrated or refused clearly.

``STEELQC_HOME/steelqc-home.json`` = ``{"format": N, "written_by": "<steelqc version>"}``. The format covers what
steelqc itself writes there and reads back later: run folders (``state.json``), the split ledger, the monitor's
ledger, the review queue, the decision log. (MLflow's and Prefect's databases carry their own schema versions: the
Prefect server migrates its database when it starts; MLflow refuses an older one with "run mlflow db upgrade".)

* a new, empty home is stamped with :data:`HOME_FORMAT`;
* a home without the file was written before it existed, which is format 1; it is left as it is;
* a home of an older format is migrated step by step (:data:`MIGRATIONS`, one function a step), then stamped;
* a home of a newer format is refused (:class:`HomeFormatError`), naming both formats and the steelqc that wrote it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from steelqc.tasks.fileio import atomic_write

log = logging.getLogger(__name__)

HOME_FORMAT = 1
MARKER = "steelqc-home.json"
MIGRATIONS: dict[int, Callable[[Path], None]] = {}
"""Format N -> the function that turns a format-N home into format N + 1 (none yet: format 1 is the first)."""


class HomeFormatError(ValueError):
    """A home this steelqc cannot use; ``path`` is the marker file."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def steelqc_version() -> str:
    try:
        return version("steelqc")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _stamp(home: Path, fmt: int) -> None:
    text = json.dumps({"format": fmt, "written_by": steelqc_version()}) + "\n"
    atomic_write(home / MARKER, lambda tmp: tmp.write_text(text))


def read_format(home: Path) -> tuple[int, str]:
    """(format, the steelqc that wrote it) of a home; (1, "before the format marker") without a marker."""
    path = home / MARKER
    if not path.exists():
        return 1, "before the format marker"
    try:
        data = json.loads(path.read_text())
        fmt = data["format"]
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
            raise ValueError(f"format {fmt!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HomeFormatError(f"{path} is not a steelqc home marker ({exc}): restore it or remove it", path) from None
    return fmt, str(data.get("written_by", "unknown"))


def check_home(home: Path) -> int:
    """Make ``home`` usable by this steelqc (stamp, migrate or refuse, as the module doc says); its format."""
    fmt, writer = read_format(home)
    if fmt > HOME_FORMAT:
        raise HomeFormatError(
            f"STEELQC_HOME {home} holds home format {fmt}, written by steelqc {writer}; this steelqc "
            f"({steelqc_version()}) reads format {HOME_FORMAT} and older: upgrade steelqc, or point STEELQC_HOME at "
            "another folder (a backup restored for this version: infra/restore.sh)",
            home / MARKER,
        )
    if not (home / MARKER).exists() and home.is_dir() and not any(home.iterdir()):
        _stamp(home, HOME_FORMAT)  # a new home
        return HOME_FORMAT
    while fmt < HOME_FORMAT:
        log.warning("migrating STEELQC_HOME %s from home format %d to %d", home, fmt, fmt + 1)
        MIGRATIONS[fmt](home)
        fmt += 1
        _stamp(home, fmt)
    return fmt
