"""infra/backup.sh and infra/restore.sh with the artifact store in S3 (moto's server): every object under the prefix
comes back after the prefix was emptied, nothing outside it is touched, and a changed backup file is refused."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.helpers import ROOT, STEELQC
from tests.integration.conftest import MotoS3

BUCKET = "steelqc"


def script(name: str, *args: str, code: int = 0) -> dict:
    env = {**os.environ, "PYTHON": str(Path(STEELQC[0]).with_name("python"))}
    proc = subprocess.run([str(ROOT / "infra" / name), *args, "--json"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == code, f"{name}: {proc.returncode}\n{proc.stdout}\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_an_s3_artifact_store_is_backed_up_and_restored(
    moto_s3: MotoS3, steelqc_home: Path, tmp_path: Path, monkeypatch
) -> None:
    s3 = moto_s3.client()
    s3.create_bucket(Bucket=BUCKET)
    objects = {"mlflow/1/abc/artifacts/model/MLmodel": b"flavors: {}", "mlflow/1/abc/artifacts/data/w.pt": b"\0" * 999}
    for key, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    s3.put_object(Bucket=BUCKET, Key="inbox/new.jpg", Body=b"not the artifact store")
    monkeypatch.setenv("STEELQC_ARTIFACTS_DESTINATION", f"s3://{BUCKET}/mlflow")
    (steelqc_home / "runs" / "train-1").mkdir(parents=True)
    (steelqc_home / "split_ledger.csv").write_text("sha256,split\n")

    made = script("backup.sh", str(tmp_path / "backup"))
    assert made["artifacts"] == f"s3://{BUCKET}/mlflow" and made["databases"] == []
    assert script("restore.sh", str(tmp_path / "backup"), code=2)["error"].endswith("restore with --replace")

    for key in objects:
        s3.delete_object(Bucket=BUCKET, Key=key)
    (steelqc_home / "split_ledger.csv").unlink()
    script("restore.sh", str(tmp_path / "backup"), "--replace")
    for key, body in objects.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == sorted(
        [*objects, "inbox/new.jpg"]
    )
    assert (steelqc_home / "split_ledger.csv").read_text() == "sha256,split\n"

    (tmp_path / "backup" / "home.tar.gz").write_bytes(b"changed")
    refused = script("restore.sh", str(tmp_path / "backup"), "--replace", code=2)
    assert "home.tar.gz: missing or changed since the backup" in refused["error"]
