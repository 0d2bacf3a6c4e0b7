"""Credentials never leave a steelqc process in clear: the one masking helper for logs, JSON and summaries.

A secret is any value steelqc can know is one: the environment variables that hold credentials by name
(``*PASSWORD*``, ``*SECRET*``, ``*TOKEN*``, ``*AUTH_STRING*``, ``*WEBHOOK*``, ``*API_KEY*``: the Prefect API auth
string, MLflow's tracking password and Flask secret key, S3's secret key, the alert webhook URL...), the password of
any URL in the environment or the settings (``postgresql://user:PASSWORD@host/db``), the path and query of the alert
webhook (``https://hooks.example.com/T0/B0/TOKEN``: the token is the path) and the HTTP basic-auth header forms of
user:password pairs. :func:`redact` replaces each with ``***`` and masks the password of any URL it does not know
(``scheme://user:***@``); :func:`redact_obj` does it in every string of a JSON-like object (before it is dumped, so
escaping cannot hide a secret); :func:`install` makes every log record of this process redacted when it is made,
whatever handler writes it (stderr, a log file, Prefect's API log handler that feeds the UI).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

MASK = "***"
MIN_SECRET = 4
"""Shorter values are never treated as secrets (masking ``1`` or ``true`` everywhere would garble logs)."""
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|WEBHOOK|API_KEY|CREDENTIAL", re.IGNORECASE)
"""Environment variable names whose whole value is a secret."""
URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@'\"`]+:)(?P<password>[^\s@/'\"`]+)@")
"""``scheme://user:password@``: the password of a URL in free text (no white space or quote inside)."""
BASIC_PAIRS = (("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"), ("MLFLOW_AUTH_ADMIN_USERNAME",
               "MLFLOW_AUTH_ADMIN_PASSWORD"))  # fmt: skip
"""(user, password) variables whose ``user:password`` also travels base64-encoded in an Authorization header."""
URL_SETTINGS = ("database_url", "optuna_storage", "tracking_uri", "artifacts_destination", "s3_endpoint_url")
WEBHOOK_SETTINGS = ("alert_webhook_url",)

_known: set[str] = set()
_lock = threading.Lock()
_installed = False


def url_password(url: str) -> str | None:
    """The password in a URL's user info (``scheme://user:password@host``), None without one."""
    try:
        password = urlsplit(url.strip()).password
    except ValueError:
        return None
    return password or None


def webhook_secret(url: str) -> str | None:
    """What identifies a webhook URL's owner: its path and query (Slack, Teams and most services put the token
    there), None for a bare host."""
    parts = urlsplit(url.strip())
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return tail if len(tail.strip("/")) >= MIN_SECRET else None


def _basic_forms(user: str, password: str) -> set[str]:
    """``user:password`` and its base64 (an Authorization: Basic header)."""
    pair = f"{user}:{password}"
    return {pair, base64.b64encode(pair.encode()).decode()}


def secrets_in_env(env: Mapping[str, str] | None = None) -> set[str]:
    """Every secret the environment holds (module doc)."""
    env = os.environ if env is None else env
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        if "WEBHOOK" in name.upper():
            found.add(webhook_secret(value) or value)
        elif SECRET_NAME.search(name):
            found.add(value)
            if "AUTH_STRING" in name.upper() and ":" in value:
                found.add(base64.b64encode(value.encode()).decode())
        if "://" in value and (password := url_password(value)):
            found.add(password)
    for user_var, password_var in BASIC_PAIRS:
        if env.get(user_var) and env.get(password_var):
            found |= _basic_forms(env[user_var], env[password_var])
    return {s for s in found if len(s) >= MIN_SECRET}


def secrets_in_settings(settings: Any) -> set[str]:
    """The secrets of a settings object: passwords of its URLs, its alert webhook's path."""
    found: set[str] = set()
    for name in URL_SETTINGS:
        value = getattr(settings, name, None)
        if isinstance(value, str) and (password := url_password(value)):
            found.add(password)
    for name in WEBHOOK_SETTINGS:
        value = getattr(settings, name, None)
        if isinstance(value, str) and value:
            found.add(webhook_secret(value) or value)
    return {s for s in found if len(s) >= MIN_SECRET}


def remember(values: Iterable[str]) -> None:
    """Add secrets that :func:`redact` masks from now on in this process."""
    with _lock:
        _known.update(v for v in values if v and len(v) >= MIN_SECRET)


def known() -> frozenset[str]:
    """The secrets remembered so far."""
    with _lock:
        return frozenset(_known)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret (``secrets``, else those remembered) and every URL password replaced by ``***``."""
    values = known() if secrets is None else frozenset(secrets)
    for value in sorted(values, key=len, reverse=True):  # the longest first: a URL before its password
        if value in text:
            text = text.replace(value, MASK)
    return URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text) if "://" in text else text


def redact_obj(obj: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of a JSON-like object (dicts, lists, tuples, strings) with :func:`redact` applied to every string,
    keys included; other values are kept."""
    values = known() if secrets is None else frozenset(secrets)
    if isinstance(obj, str):
        return redact(obj, values)
    if isinstance(obj, Mapping):
        return {redact_obj(k, values): redact_obj(v, values) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v, values) for v in obj]
    return obj


def error_text(exc: BaseException) -> str:
    """An exception's message, redacted; a pydantic validation error without the input it quotes (pydantic shows
    the whole input, cut short, so a password may appear in part where no mask can find it)."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        text = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in errors)
        return redact(f"{exc.error_count()} invalid setting(s): {text}")
    return redact(str(exc))


def _redacting_factory(factory: Any) -> Any:
    """A log record factory: the record's message, arguments and traceback text redacted when it is made."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        values = known()
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it for the handler to report
            return record
        clean = redact(message, values)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text, values)
        return record

    return make


def install(env: Mapping[str, str] | None = None) -> None:
    """Remember the environment's secrets and redact every log record of this process from now on (idempotent)."""
    global _installed
    remember(secrets_in_env(env))
    with _lock:
        if _installed:
            return
        logging.setLogRecordFactory(_redacting_factory(logging.getLogRecordFactory()))
        _installed = True
