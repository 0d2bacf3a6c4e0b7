"""Issue 14's done-when: `steelqc train` with two training processes runs `torchrun --nproc_per_node 2` on the CPU
(gloo), trains on generated data and registers one version; the evidence comes from the ranks' own records.

The shuffled sampler (``balanced_sampler`` off) makes disjoint shards show as disjoint image sets; the default
class-balanced sampler draws with replacement, so its shards are disjoint positions of one draw
(tests/unit/test_sharding.py checks that).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from steelqc.tasks.config import Settings
from steelqc.tasks.data.synth import generate_dataset
from tests.helpers import RELAXED, run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_env")]  # one real Prefect server


def test_two_gloo_processes_train_and_register_one_version(
    tmp_path: Path, steelqc_home: Path, store: tuple[Settings, MlflowClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    generate_dataset(data, n_images=72, seed=5, mix={0: 0.3, 1: 0.25, 2: 0.15, 3: 0.15, 4: 0.15})
    for key, value in {**RELAXED, "STEELQC_TRAIN__PROCESSES": "2", "STEELQC_TRAIN__BALANCED_SAMPLER": "false"}.items():
        monkeypatch.setenv(key, value)
    code, summary, stderr = run("train", "--data", str(data), "--profile", "tiny", "--json", home=steelqc_home)
    assert code == 0, stderr[-3000:]

    settings, client = store
    assert summary["model_version"] == "1"
    assert len(client.search_model_versions(f"name='{settings.registered_model}'")) == 1
    ddp = summary["train"]["distributed"]
    assert ddp["command"].startswith("torchrun --standalone --nproc_per_node 2 ")
    assert (ddp["world_size"], ddp["backend"], [r["rank"] for r in ddp["ranks"]]) == (2, "gloo", [0, 1])

    params = client.get_run(summary["run_id"]).data.params
    assert (params["train.processes"], params["ddp.world_size"], params["ddp.backend"]) == ("2", "2", "gloo")
    assert params["ddp.command"] == ddp["command"]
    history = client.get_metric_history(summary["run_id"], "val_macro_f1")
    assert [m.step for m in history] == [1]  # rank 0's epoch, logged by the parent

    folder = Path(summary["run_dir"]) / "ddp"
    records = {r: [json.loads(line) for line in (folder / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert [len(lines) for lines in records.values()] == [1, 1]  # one epoch each
    first, second = records[0][0], records[1][0]
    assert first["pid"] != second["pid"] and {first["world_size"], second["world_size"]} == {2}
    assert first["backend"] == second["backend"] == "gloo"
    n_train = sum(summary["splits"]["train"].values())
    padding = (-n_train) % 2  # DistributedSampler repeats images to give both ranks the same number
    assert len(first["indices"]) == len(second["indices"]) == (n_train + padding) // 2
    assert len(set(first["indices"]) & set(second["indices"])) <= padding
    assert set(first["indices"]) | set(second["indices"]) == set(range(n_train))
    assert "launching 2 training processes: torchrun --standalone --nproc_per_node 2" in stderr
