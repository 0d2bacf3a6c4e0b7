"""`steelqc train --distill-from`: a student learns from a registered teacher through the real pipeline (Prefect,
MLflow), the teacher pinned to a version and recorded; teachers that cannot teach are refused with exit 2."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from steelqc.model_registry import packaging
from steelqc.model_registry.store import client, configure
from steelqc.tasks.config import Settings
from tests.helpers import Champion, run


@pytest.mark.slow
def test_train_distils_a_student_from_the_champion(
    champion: Champion, prefect_env: dict, steelqc_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an alias is pinned to the version it names now (read-only on the shared champion's store)
    monkeypatch.setenv("STEELQC_HOME", str(champion.home))
    configure(Settings())
    name = champion.uri.removeprefix("models:/").split("@")[0]
    assert packaging.pinned_uri(champion.uri) == f"models:/{name}/{champion.summary['model_version']}"
    assert packaging.pinned_uri("/a/model/dir") == "/a/model/dir"
    # the champion's files, as another store or a plant would hold them, teach a student in a fresh home
    teacher = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion.uri, dst_path=str(tmp_path / "t")))
    monkeypatch.setenv("STEELQC_HOME", str(steelqc_home))
    args = ("train", "--data", str(champion.data), "--profile", "tiny", "--json")
    code, summary, stderr = run(*args, "--distill-from", str(teacher), "--distill-alpha", "0.7", home=steelqc_home)
    assert code == 0, stderr[-3000:]
    assert summary["train"]["teacher"] == str(teacher)
    assert f"distilling from {teacher} (temperature 2.0, soft weight 0.7)" in stderr
    params = client(Settings()).get_run(summary["run_id"]).data.params
    assert params["train.distill_from"] == str(teacher)
    assert (params["train.distill_alpha"], params["train.distill_temperature"]) == ("0.7", "2.0")
    assert summary["model_version"], "a student is a candidate like any other: registered and gated"

    # teachers that cannot teach: one JSON error, exit 2
    code, error, _ = run(*args, "--distill-from", "models:/no-such-model@champion", home=steelqc_home)
    assert code == 2 and error["error"].startswith("teacher models:/no-such-model@champion"), error
    code, error, _ = run(*args, "--distill-from", str(teacher), "--tune-trials", "1", home=steelqc_home)
    assert code == 2 and "cannot be combined with tuning" in error["error"], error
