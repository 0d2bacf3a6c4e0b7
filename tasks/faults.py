"""Faults from outside steelqc's code: a server that does not answer, a full disk (README "Faults and retries").

Pure functions, no server or MLflow import: the retry bounds of the two HTTP clients steelqc talks through and the
worst case they add up to, and the classification of an exception (with its whole cause chain) as one of these
faults, so that every give-up can say what failed, how long it was retried and what to do.
"""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MLFLOW_JITTER_S = 1.0  # MLflow's MLFLOW_HTTP_REQUEST_BACKOFF_JITTER default: up to this much added to each wait
URLLIB3_BACKOFF_MAX_S = 120.0  # urllib3 never waits longer than this between two tries
PREFECT_JITTER = 0.2  # PREFECT_CLIENT_RETRY_JITTER_FACTOR default: a wait is at most 1.2 times its nominal value
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXT = ("no space left on device", "database or disk is full", "disk quota exceeded")

# What a client library says when the server is not there (refused, dropped, timed out) or kept failing (5xx).
_UNREACHABLE = (
    (re.compile(r"connection refused|failed to establish a new connection|connecterror|all connection attempts", re.I),
     "connection refused"),
    (re.compile(r"remotedisconnected|connection aborted|connection reset|remoteprotocolerror|readerror", re.I),
     "connection dropped"),
    (re.compile(r"timed? ?out|timeout", re.I), "timed out"),
    (re.compile(r"too many 5\d\d error responses|error code 5\d\d|server error '5\d\d", re.I), "server errors (5xx)"),
)  # fmt: skip


@dataclass(frozen=True)
class MlflowRetries:
    """How MLflow's HTTP client retries one call (urllib3 under it): ``retries`` after the first try, waiting
    nothing before the first retry, then ``backoff_s`` × 2, 4, 8, ... s (plus up to 1 s jitter, at most 120 s); each
    try waits up to ``timeout_s`` for the server."""

    retries: int
    backoff_s: int
    timeout_s: int

    @property
    def tries(self) -> int:
        return self.retries + 1

    def waits(self) -> list[float]:
        """The longest wait before each retry."""
        later = [min(URLLIB3_BACKOFF_MAX_S, self.backoff_s * 2**n + MLFLOW_JITTER_S) for n in range(1, self.retries)]
        return [0.0, *later] if self.retries else []

    def refused_s(self) -> float:
        """The longest one call takes against a server that refuses connections (the waits alone)."""
        return sum(self.waits())

    def hung_s(self) -> float:
        """The longest one call takes against a server that accepts but never answers (every try times out)."""
        return self.refused_s() + self.tries * self.timeout_s

    def environ(self) -> dict[str, str]:
        """MLflow's own variables for these bounds."""
        return {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(self.backoff_s),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(self.timeout_s),
        }


@dataclass(frozen=True)
class PrefectRetries:
    """How Prefect's API client retries one call after a dropped connection, a timeout or a 502/503: ``retries``
    times, waiting 2, 4, 8, ... s (at most 20 % more)."""

    retries: int

    @property
    def tries(self) -> int:
        return self.retries + 1

    def worst_s(self) -> float:
        """The longest one call keeps retrying."""
        return sum(2**n * (1 + PREFECT_JITTER) for n in range(1, self.retries + 1))


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception behind it (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def unreachable(exc: BaseException, url: str) -> str | None:
    """Why a call to the server at ``url`` gave up (connection refused, dropped, timed out, server errors), or None
    when ``exc`` is no such failure. Only exceptions whose text names ``url``'s host and port count, so a refused
    connection to some other service is not blamed on this one."""
    where = _host_port(url)
    if where is None:
        return None
    for item in chain(exc):
        text = f"{type(item).__name__}: {item}"
        if where not in text and not _names_url(item, where):
            continue
        for pattern, reason in _UNREACHABLE:
            if pattern.search(text):
                return reason
    return None


def _host_port(url: str) -> str | None:
    match = re.match(r"^https?://([^/@]+@)?([^/]+)", url)
    if not match:
        return None
    host = match.group(2)
    return host if ":" in host else f"{host}:{443 if url.startswith('https') else 80}"


def _names_url(exc: BaseException, where: str) -> bool:
    """httpx puts the URL on the request, not in the message."""
    request = getattr(exc, "_request", None)
    url = getattr(request, "url", None)
    return url is not None and where in str(url)


def disk_full(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain that says a disk is full (ENOSPC, a quota, SQLite's "database or disk is
    full"), or None."""
    for item in chain(exc):
        if isinstance(item, OSError) and item.errno in DISK_FULL_ERRNOS:
            return item
        if any(text in str(item).lower() for text in DISK_FULL_TEXT):
            return item
    return None


@dataclass(frozen=True)
class Space:
    """Free and total bytes of the file system holding ``path``."""

    path: Path
    free: int
    total: int


def fullest(paths: Iterable[Path | str]) -> Space | None:
    """Of the existing ``paths`` (their nearest existing parent), the one on the file system with the least free
    space; None when none can be measured."""
    spaces = []
    for path in paths:
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            usage = shutil.disk_usage(probe)
        except OSError:
            continue
        spaces.append(Space(Path(path), usage.free, usage.total))
    return min(spaces, key=lambda s: (s.free, -len(str(s.path)))) if spaces else None


def size(n: float) -> str:
    """``n`` bytes, readable (1.5 MB)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover
