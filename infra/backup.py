"""Back up and restore what steelqc keeps: its databases, the MLflow artifact store and ``STEELQC_HOME``'s own files.

    infra/backup.sh OUT [--json]                 (python -m steelqc.infra.backup backup OUT)
    infra/restore.sh BACKUP [--replace] [--json] (python -m steelqc.infra.backup restore BACKUP)

Both read the steelqc settings (``STEELQC_*``): ``database_url`` and ``database_prefix``, ``artifacts_destination``
(a folder or ``s3://bucket/prefix`` through ``s3_endpoint_url``), ``home``. A backup folder (mode 0700: the dumps hold
MLflow's users and their password hashes) holds:

* ``manifest.json``: ``format`` (:data:`FORMAT`), when, the steelqc version, what is inside, each file's SHA-256;
* ``db/<name>.dump``: ``pg_dump -Fc`` of each steelqc database on the server of ``database_url`` that exists
  (``<prefix>_mlflow``, ``_mlflow_auth``, ``_prefect``, ``_optuna``); the password travels in ``PGPASSWORD``, never
  on a command line;
* ``sqlite/<file>``: the SQLite stores under ``STEELQC_HOME`` that exist (``mlflow.db``, ``mlflow-auth.db``,
  ``optuna.db``, ``prefect/prefect.db``), copied with SQLite's online backup;
* ``artifacts.tar.gz``: the artifact store (every object under the S3 prefix, or the folder);
* ``home.tar.gz``: the rest of ``STEELQC_HOME`` (run folders, split ledger, review queue, reviewed images, monitor
  ledger, decision log, exports), without what can be rebuilt or holds secrets: ``cache/``, ``servers/``,
  ``inbox/``, ``prefect/`` and the stores above.

Restore checks the manifest (a format it does not know is refused, naming it) and every hash before it writes
anything; it refuses to overwrite a database that holds tables, a non-empty artifact store or existing home files
unless ``--replace`` (then the databases are dropped and created again). Stop the servers first. The MLflow database
records artifact locations (``mlflow-artifacts:/...`` through the server, or absolute paths for a store written
directly), so restore onto the same ``artifacts_destination`` and ``STEELQC_HOME`` path.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from steelqc.tasks import redact
from steelqc.tasks.config import Settings, database_for, load_settings

log = logging.getLogger("steelqc.backup")

FORMAT = 1
"""Version of the backup folder's layout; restore refuses any other."""
SERVICES = ("mlflow", "mlflow_auth", "prefect", "optuna")
SQLITE_FILES = ("mlflow.db", "mlflow-auth.db", "optuna.db", "prefect/prefect.db")
HOME_EXCLUDED = ("cache", "servers", "inbox", "prefect")


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; ``code`` 2 for bad input (a folder, a manifest), 1 otherwise."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Pg:
    """How to reach one database without putting its password on a command line."""

    host: str
    port: str
    user: str
    password: str | None
    database: str

    @classmethod
    def of(cls, url: str, database: str) -> Pg:
        parts = urlsplit(url)
        return cls(parts.hostname or "localhost", str(parts.port or 5432), parts.username or "postgres",
                   parts.password, database)  # fmt: skip

    def args(self) -> list[str]:
        return ["-h", self.host, "-p", self.port, "-U", self.user, "-d", self.database]

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def pg_bin(name: str) -> str:
    """A PostgreSQL client program: on PATH, else the newest under /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise BackupError(f"PostgreSQL's {name} is not installed (apt-get install postgresql-client)")
    return str(versions[-1])


def _run(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackupError(f"{Path(argv[0]).name} failed ({proc.returncode}): {redact.redact(proc.stderr.strip())}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def steelqc_version() -> str:
    try:
        return version("steelqc")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# ------------------------------------------------------------------------------------------------ databases


def existing_databases(settings: Settings) -> list[str]:
    """The steelqc databases present on the server of ``database_url``."""
    assert settings.database_url
    names = [f"{settings.database_prefix}_{service}" for service in SERVICES]
    admin = database_for(settings.database_url, urlsplit(settings.database_url).path.lstrip("/") or "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,)).fetchall()
    present = {row[0] for row in rows}
    return [name for name in names if name in present]


def dump_databases(settings: Settings, out: Path) -> list[str]:
    """``pg_dump -Fc`` of each steelqc database into ``out/db``; their names."""
    names = existing_databases(settings)
    (out / "db").mkdir()
    for name in names:
        pg = Pg.of(settings.database_url or "", name)
        _run([pg_bin("pg_dump"), "-Fc", "--no-owner", *pg.args(), "-f", str(out / "db" / f"{name}.dump")], pg.env())
        log.info("dumped database %s", name)
    return names


def _holds_tables(admin_url: str, name: str) -> bool:
    try:
        with psycopg.connect(database_for(admin_url, name), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
                               "'information_schema')").fetchone()  # fmt: skip
    except psycopg.OperationalError:
        return False  # no such database
    return bool(row and row[0])


def restore_databases(settings: Settings, backup: Path, names: list[str], replace: bool) -> None:
    """Create each database (dropped first with ``replace``) and ``pg_restore`` it in one transaction."""
    url = settings.database_url
    if not names:
        return
    if not url:
        raise BackupError("the backup holds PostgreSQL dumps: set STEELQC_DATABASE_URL to the server to restore to", 2)
    admin = database_for(url, urlsplit(url).path.lstrip("/") or "postgres")
    busy = [name for name in names if _holds_tables(admin, name)]
    if busy and not replace:
        raise BackupError(f"databases {', '.join(busy)} already hold tables: restore with --replace to drop them", 2)
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            if replace:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    for name in names:
        pg = Pg.of(url, name)
        dump = backup / "db" / f"{name}.dump"
        _run([pg_bin("pg_restore"), "--no-owner", "--exit-on-error", "--single-transaction", *pg.args(), str(dump)],
             pg.env())  # fmt: skip
        log.info("restored database %s", name)


def copy_sqlite(settings: Settings, out: Path) -> list[str]:
    """SQLite's online backup of each SQLite store under ``home`` into ``out/sqlite``; their relative paths."""
    copied = []
    for rel in SQLITE_FILES:
        source = settings.home / rel
        if not source.is_file():
            continue
        target = out / "sqlite" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(target) as dst:
            src.backup(dst)
        copied.append(rel)
    return copied


# ------------------------------------------------------------------------------------------------ artifacts


def artifact_store(settings: Settings) -> str:
    """The artifact store: ``artifacts_destination`` (folder or ``s3://``), else ``STEELQC_HOME/mlartifacts``."""
    return settings.artifacts_destination or str(settings.artifact_root)


def _s3(settings: Settings, uri: str) -> tuple[Any, str, str]:
    """A boto3 S3 client (through ``s3_endpoint_url``), the bucket and the key prefix of ``s3://bucket/prefix``."""
    import boto3  # noqa: PLC0415  (only for S3 stores)

    parts = urlsplit(uri)
    prefix = parts.path.strip("/")
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url), parts.netloc, f"{prefix}/" if prefix else ""


def _s3_objects(client, bucket: str, prefix: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def save_artifacts(settings: Settings, out: Path) -> str:
    """The artifact store into ``out/artifacts.tar.gz``; the store's location."""
    store = artifact_store(settings)
    with tarfile.open(out / "artifacts.tar.gz", "w:gz") as tar:
        if store.startswith("s3://"):
            client, bucket, prefix = _s3(settings, store)
            for key in _s3_objects(client, bucket, prefix):
                data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                info = tarfile.TarInfo(key[len(prefix) :].lstrip("/"))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        elif Path(store).is_dir():
            tar.add(store, arcname=".")
    return store


def restore_artifacts(settings: Settings, backup: Path, replace: bool) -> None:
    """The artifact store back from ``artifacts.tar.gz`` (a non-empty store only with ``replace``)."""
    store = artifact_store(settings)
    with tarfile.open(backup / "artifacts.tar.gz", "r:gz") as tar:
        if store.startswith("s3://"):
            client, bucket, prefix = _s3(settings, store)
            if next(iter(_s3_objects(client, bucket, prefix)), None) and not replace:
                raise BackupError(f"artifact store {store} is not empty: restore with --replace", 2)
            for member in tar.getmembers():
                if member.isfile():
                    body = tar.extractfile(member).read()  # type: ignore[union-attr]
                    client.put_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{member.name}".lstrip("/"), Body=body)
            return
        folder = Path(store)
        if folder.is_dir() and any(folder.iterdir()):
            if not replace:
                raise BackupError(f"artifact store {folder} is not empty: restore with --replace", 2)
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tar.extractall(folder, filter="data")


# ------------------------------------------------------------------------------------------------ home


def _home_filter(settings: Settings, store: str):
    """Leave out of home.tar.gz what is rebuilt, secret or saved on its own (module doc)."""
    home = settings.home.resolve()
    skipped = {home / name for name in HOME_EXCLUDED} | {home / rel for rel in SQLITE_FILES}
    if "://" not in store:
        skipped.add(Path(store).resolve())

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        path = (home / info.name).resolve() if info.name != "." else home
        return None if any(path == s or path.is_relative_to(s) for s in skipped) else info

    return keep


def save_home(settings: Settings, out: Path, store: str) -> None:
    with tarfile.open(out / "home.tar.gz", "w:gz") as tar:
        if settings.home.is_dir():
            tar.add(settings.home, arcname=".", filter=_home_filter(settings, store))


def restore_home(settings: Settings, backup: Path, sqlite: list[str], replace: bool) -> None:
    """Home files (and SQLite stores) back; an existing file is kept out unless ``replace``."""
    home = settings.home
    with tarfile.open(backup / "home.tar.gz", "r:gz") as tar:
        clash = [m.name for m in tar.getmembers() if m.isfile() and (home / m.name).exists()]
        clash += [rel for rel in sqlite if (home / rel).exists()]
        if clash and not replace:
            raise BackupError(f"{len(clash)} files exist in {home} (e.g. {clash[0]}): restore with --replace", 2)
        home.mkdir(parents=True, exist_ok=True)
        tar.extractall(home, filter="data")
    for rel in sqlite:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(backup / "sqlite" / rel, home / rel)


# ------------------------------------------------------------------------------------------------ the two commands


def backup(settings: Settings, out: Path) -> dict:
    """Write a backup folder ``out`` (new or empty); its manifest."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BackupError(f"{out}: must be a new or empty folder", 2)
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    databases = dump_databases(settings, out) if settings.database_url else []
    sqlite = copy_sqlite(settings, out)  # also beside PostgreSQL: Optuna's default study store is SQLite
    store = save_artifacts(settings, out)
    save_home(settings, out, store)
    files = {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {
        "format": FORMAT, "created": datetime.now(UTC).isoformat(timespec="seconds"), "steelqc": steelqc_version(),
        "databases": databases, "sqlite": sqlite, "artifacts": store, "home": str(settings.home.resolve()),
        "files": files,
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {**manifest, "backup": str(out), "bytes": sum((out / f).stat().st_size for f in files)}


def read_manifest(folder: Path) -> dict:
    """The manifest, checked: a known format and every file's hash (:class:`BackupError`, code 2, otherwise)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BackupError(f"{path}: not a steelqc backup manifest ({exc})", 2) from None
    found = manifest.get("format")
    if found != FORMAT:
        raise BackupError(
            f"{path}: backup format {found!r} written by steelqc {manifest.get('steelqc', '?')}; this steelqc "
            f"({steelqc_version()}) restores format {FORMAT} only: restore it with the steelqc that wrote it",
            2,
        )
    for rel, digest in manifest.get("files", {}).items():
        if not (folder / rel).is_file() or sha256(folder / rel) != digest:
            raise BackupError(f"{folder / rel}: missing or changed since the backup (SHA-256 differs)", 2)
    return manifest


def restore(settings: Settings, folder: Path, replace: bool) -> dict:
    """Restore a backup folder (checked first); what was restored."""
    manifest = read_manifest(folder)
    restore_databases(settings, folder, manifest["databases"], replace)
    restore_artifacts(settings, folder, replace)
    restore_home(settings, folder, manifest["sqlite"], replace)
    keys = ("databases", "sqlite", "created", "steelqc")
    return {"restored": str(folder), **{k: manifest.get(k) for k in keys}, "artifacts": artifact_store(settings),
            "home": str(settings.home)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``backup OUT`` or ``restore BACKUP [--replace]``, with ``--json``: one JSON object on stdout; exit 2 on bad
    input, 1 on a failure."""
    parser = argparse.ArgumentParser(prog="steelqc-backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("backup", "restore"))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--replace", action="store_true", help="restore over existing databases and files")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    redact.install()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        redact.remember(redact.secrets_in_settings(settings))
        if args.command == "backup":
            result = backup(settings, args.folder)
        else:
            result = restore(settings, args.folder, args.replace)
    except (BackupError, psycopg.Error, OSError, tarfile.TarError, ValueError) as exc:
        code = exc.code if isinstance(exc, BackupError) else 1
        message = f"{args.command} failed: {redact.error_text(exc)}"
        log.error("%s", message)  # without --json the message is on stderr only
        if args.json:
            print(json.dumps({"error": message, "file": str(args.folder), "row": None}))
        return code
    result = redact.redact_obj(result)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items() if k != "files"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
