"""Credentials are masked (tasks/redact.py) and kept off the MLflow server's command line (infra/)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from steelqc.infra import mlflow_auth
from steelqc.infra.services import plans
from steelqc.tasks import redact
from steelqc.tasks.config import Settings

ENV = {
    "PREFECT_API_AUTH_STRING": "ops:Pr3fect-auth-str1ng",
    "MLFLOW_TRACKING_USERNAME": "admin",
    "MLFLOW_TRACKING_PASSWORD": "Mlfl0w-pa55word",
    "AWS_SECRET_ACCESS_KEY": "s3-Secret-Key-42",
    "STEELQC_DATABASE_URL": "postgresql://steelqc:Db-pa55word@db:5432/postgres",
    "STEELQC_ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/W3bhook-t0ken",
    "HOME": "/root",
    "STEELQC_SEED": "42",
}
SECRETS = ("Pr3fect-auth-str1ng", "Mlfl0w-pa55word", "s3-Secret-Key-42", "Db-pa55word", "W3bhook-t0ken")


def test_secrets_of_the_environment_are_masked_everywhere_in_text() -> None:
    found = redact.secrets_in_env(ENV)
    basic = base64.b64encode(b"admin:Mlfl0w-pa55word").decode()
    text = (
        f"auth {ENV['PREFECT_API_AUTH_STRING']} header Basic {basic} key {ENV['AWS_SECRET_ACCESS_KEY']} "
        f"db {ENV['STEELQC_DATABASE_URL']} hook {ENV['STEELQC_ALERT_WEBHOOK_URL']} seed 42 home /root"
    )
    out = redact.redact(text, found)
    assert not [s for s in SECRETS if s in out], out
    assert basic not in out
    assert "postgresql://steelqc:***@db:5432/postgres" in out
    assert "https://hooks.example.com***" in out  # the host stays readable, the token is gone
    assert "seed 42 home /root" in out  # short and ordinary values are never masked


def test_a_url_password_nobody_declared_is_masked() -> None:
    text = "could not connect to postgresql+psycopg://u:hunter2@h:1/steelqc_mlflow, see http://127.0.0.1:5000/x"
    assert redact.redact(text, ()) == (
        "could not connect to postgresql+psycopg://u:***@h:1/steelqc_mlflow, see http://127.0.0.1:5000/x"
    )


def test_settings_secrets_and_nested_objects() -> None:
    cfg = Settings(
        database_url="postgresql://u:Set-pa55@h:1/postgres",
        optuna_storage="postgresql://u:Opt-pa55@h:1/optuna",
        alert_webhook_url="https://hooks.example.com/T/B/Hook-s3cret",
    )
    found = redact.secrets_in_settings(cfg)
    obj = {"a": ["x Set-pa55", ("Opt-pa55",)], "see /T/B/Hook-s3cret": 3, "n": 1.5, "none": None}
    assert redact.redact_obj(obj, found) == {"a": ["x ***", ["***"]], "see ***": 3, "n": 1.5, "none": None}


def test_invalid_settings_are_named_without_the_values_given() -> None:
    with pytest.raises(ValueError) as caught:
        Settings(database_url="mysql://u:Hidden-pa55word-that-is-long@h:1/db", gates={"macro_f1_min": "x"})
    text = redact.error_text(caught.value)
    assert "database_url must be a postgresql:// URL" in text or "gates.macro_f1_min" in text
    assert "pa55" not in text and "Hidden" not in text  # pydantic's own message quotes the input, cut short


def test_log_records_are_redacted_when_made(caplog: pytest.LogCaptureFixture) -> None:
    redact.install({"MY_DB_PASSWORD": "L0gged-s3cret"})
    logger = logging.getLogger("steelqc.test_redact")
    with caplog.at_level(logging.INFO):
        logger.info("connecting with %s", "L0gged-s3cret")
        try:
            raise RuntimeError("refused: L0gged-s3cret")
        except RuntimeError:
            logger.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert "L0gged-s3cret" not in text and text.count("***") >= 2


def test_mlflow_server_secrets_stay_off_its_command_line(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "Adm1n-pa55"}
    db = "postgresql://u:Db-pa55@h:1/postgres"
    auth = mlflow_auth.from_settings(tmp_path, db, "steelqc", env)
    store = "postgresql+psycopg://u:Db-pa55@h:1/steelqc_mlflow"
    plan = plans(tmp_path, "127.0.0.1", 4200, 5000, store, tmp_path / "art", db, mlflow_auth=auth)["mlflow"]
    assert plan.argv[-2:] == ["--app-name", "basic-auth"]
    assert not any("pa55" in arg for arg in plan.argv)  # `ps` shows the command line to every user
    assert plan.env["MLFLOW_BACKEND_STORE_URI"] == store and plan.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "Adm1n-pa55"
    assert auth.database_uri == "postgresql+psycopg://u:Db-pa55@h:1/steelqc_mlflow_auth"
    path = mlflow_auth.write_config(auth)
    assert path.stat().st_mode & 0o777 == 0o600 and "Adm1n-pa55" not in path.read_text()
    assert (tmp_path / "servers" / mlflow_auth.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert mlflow_auth.from_settings(tmp_path, None, "steelqc", env).secret_key == auth.secret_key  # kept
    with pytest.raises(mlflow_auth.AuthSetupError, match="MLFLOW_TRACKING_PASSWORD is not set"):
        mlflow_auth.from_settings(tmp_path, None, "steelqc", {"MLFLOW_TRACKING_USERNAME": "admin"})
