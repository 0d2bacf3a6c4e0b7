"""What an older or newer steelqc wrote is migrated or refused with a message naming the versions and what to do:
model bundles, STEELQC_HOME's own files, the monitor's ledger, backups, and MLflow's database schema."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from steelqc.infra import backup
from steelqc.model_registry import schema
from steelqc.model_registry.packaging import BUNDLE_VERSION, SteelDefectModel, UnsafeModel, check_bundle_version
from steelqc.monitoring.ledger import Ledger, LedgerError
from steelqc.tasks import homeformat
from tests.helpers import run


def test_a_bundle_from_a_newer_steelqc_is_refused_before_anything_loads(tmp_path: Path) -> None:
    assert check_bundle_version({"bundle_version": BUNDLE_VERSION}, tmp_path / "b.json")
    newer = tmp_path / "bundle.json"
    newer.write_text(json.dumps({"bundle_version": BUNDLE_VERSION + 1, "architecture": "simple_cnn"}))
    with pytest.raises(
        UnsafeModel, match=rf"bundle_version {BUNDLE_VERSION + 1} was written by a newer steelqc.*upgrade"
    ):
        SteelDefectModel().load(tmp_path / "no-checkpoint-needed.pt", newer, "cpu")
    with pytest.raises(UnsafeModel, match=r"no valid bundle_version \(None\).*steelqc registry repackage"):
        check_bundle_version({"architecture": "simple_cnn"}, newer)


def test_home_format_new_old_and_newer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert homeformat.check_home(fresh) == homeformat.HOME_FORMAT
    assert json.loads((fresh / homeformat.MARKER).read_text())["format"] == homeformat.HOME_FORMAT
    old = tmp_path / "old"
    (old / "runs").mkdir(parents=True)  # written before the marker existed: format 1, left as it is
    assert homeformat.check_home(old) == 1 and not (old / homeformat.MARKER).exists()

    migrated: list[Path] = []
    monkeypatch.setattr(homeformat, "HOME_FORMAT", 2)
    monkeypatch.setitem(homeformat.MIGRATIONS, 1, migrated.append)
    assert homeformat.check_home(old) == 2 and migrated == [old]  # one step, then stamped
    assert json.loads((old / homeformat.MARKER).read_text())["format"] == 2
    assert homeformat.check_home(old) == 2 and migrated == [old]  # not migrated twice


def test_a_home_from_a_newer_steelqc_is_refused_by_every_command(steelqc_home: Path) -> None:
    steelqc_home.mkdir(parents=True)
    (steelqc_home / homeformat.MARKER).write_text(json.dumps({"format": 99, "written_by": "9.0.0"}))
    code, out, _ = run("review", "list", "--json")
    assert code == 2 and out["file"] == str(steelqc_home / homeformat.MARKER), out
    assert "home format 99, written by steelqc 9.0.0" in out["error"] and "upgrade steelqc" in out["error"]


def test_a_monitor_ledger_from_a_newer_steelqc_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"version": 2, "images": {}, "hashes": {}}))
    with pytest.raises(LedgerError, match=r"version 2, written by a newer steelqc; this one reads version 1"):
        Ledger.load(path)
    assert json.loads(path.read_text())["version"] == 2


def test_a_backup_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 7, "steelqc": "3.0.0", "files": {}}))
    with pytest.raises(backup.BackupError, match=r"backup format 7 written by steelqc 3\.0\.0.*restores format 1"):
        backup.read_manifest(tmp_path)


def test_mlflow_databases_of_an_older_or_newer_mlflow_are_told_apart(tmp_path: Path, steelqc_home: Path) -> None:
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()  # a store at this MLflow's schema
    older = sorted(schema.known_revisions())[0]
    for revision, expected in ((older, "older MLflow"), ("ffffffffffff", "newer MLflow")):
        copy = tmp_path / f"{revision}.db"
        shutil.copyfile(tmp_path / "mlflow.db", copy)
        with sqlite3.connect(copy) as db:
            db.execute("UPDATE alembic_version SET version_num = ?", (revision,))
        with pytest.raises(MlflowException) as caught:  # what MLflow itself says: "run mlflow db upgrade", for both
            MlflowClient(f"sqlite:///{copy}").search_experiments()
        advice = schema.explain(caught.value)
        assert advice is not None and expected in advice and revision in advice, advice
    assert schema.explain(RuntimeError("something else")) is None
    steelqc_home.mkdir(parents=True)
    shutil.copyfile(tmp_path / "ffffffffffff.db", steelqc_home / "mlflow.db")  # and the CLI says so, exit 1
    code, out, _ = run("registry", "history", "--json")
    assert code == 1 and out["error"].startswith("The MLflow database was written by a newer MLflow"), out
