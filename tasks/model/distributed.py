"""Data-parallel training on one machine: ``torchrun --nproc_per_node N`` processes (README "Scaling").

:func:`fit` is what the training task calls: :func:`~steelqc.tasks.model.train.train_model` in this process when
``cfg.processes`` is 1, else :func:`launch`. The parent writes the job into ``<out_dir>/ddp/`` (the train and
validation rows as Parquet, the settings as JSON) and runs::

    python -m torch.distributed.run --standalone --nproc_per_node N --log-dir <out>/ddp/logs -r 3 -t 3 \\
        -m steelqc.tasks.model.distributed --job <out>/ddp/job.json

Each worker (:func:`main`) joins the process group (gloo on the CPU, nccl with one GPU a process,
:mod:`~steelqc.tasks.model.parallel`) and runs the same ``train_model`` with its :class:`DistContext`: DDP, its
shard of every epoch, rank 0 alone validating and writing ``checkpoints/`` and one line an epoch to
``ddp/epochs.jsonl``. The parent follows that file and calls ``on_epoch`` as epochs finish (the training flow logs
them to MLflow from the parent, as for one process), relays the workers' console to its log, and reads rank 0's
``ddp/result.json`` at the end. A failed rank fails the run with :class:`DistributedTrainingError`: which rank,
its exit code and the end of its stderr (``ddp/logs/``).

Per-process batch and learning rate: ``batch_size`` is per process (the torchvision references' convention), so N
processes step with a global batch of N x ``batch_size``; ``lr`` is not scaled. The recipe's AdamW learning rate
was tuned at batch 16 and the linear-scaling rule is an SGD rule (with warm-up); re-tune ``lr`` for the new global
batch (``steelqc tune``) rather than trust a rule. ``processes`` is part of the run's fingerprint (a resume must
use the same number).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from torch.distributed.elastic.multiprocessing.errors import record

from steelqc.tasks.config import load_settings
from steelqc.tasks.data.cache import ImageCache
from steelqc.tasks.data.labels import LabelSpace
from steelqc.tasks.fileio import atomic_write
from steelqc.tasks.model.distill import Teacher
from steelqc.tasks.model.inference import available_cpus
from steelqc.tasks.model.parallel import init_from_env, shutdown
from steelqc.tasks.model.train import TrainConfig, TrainResult, resumable_state, train_model

log = logging.getLogger(__name__)

LAUNCH_DIR = "ddp"
EPOCHS_FILE = "epochs.jsonl"
RESULT_FILE = "result.json"
CONSOLE_FILE = "torchrun.log"
POLL_S = 0.5
TAIL_LINES = 25


class DistributedTrainingError(RuntimeError):
    """A training process (or torchrun itself) failed; the message names the rank and ends with its stderr."""


def fit(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    label_space: LabelSpace,
    cfg: TrainConfig,
    out_dir: Path,
    on_epoch: Callable[[int, dict], None] | None = None,
    resume: bool = False,
    teacher: Teacher | None = None,
) -> TrainResult:
    """Train as ``cfg.processes`` asks: in this process (1) or in ``torchrun`` processes (more)."""
    if cfg.processes <= 1:
        return train_model(
            train_df, val_df, label_space, cfg, out_dir, on_epoch=on_epoch, resume=resume, teacher=teacher
        )
    return launch(train_df, val_df, label_space, cfg, Path(out_dir), on_epoch, resume)


def torchrun_command(processes: int, job: Path, log_dir: Path) -> list[str]:
    """The command the parent runs: ``torchrun --standalone --nproc_per_node N`` (this interpreter's
    ``torch.distributed.run``) on :func:`main`, each rank's stdout and stderr in ``log_dir`` and on the console."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "--log-dir", str(log_dir), "--redirects", "3", "--tee", "3",
        "-m", __name__, "--job", str(job),
    ]  # fmt: skip


def shown_command(command: list[str]) -> str:
    """The command as a person would type it (``torchrun`` for ``python -m torch.distributed.run``)."""
    text = shlex.join(command)
    return text.replace(f"{shlex.quote(sys.executable)} -m torch.distributed.run", "torchrun", 1)


def write_job(
    folder: Path, train_df: pd.DataFrame, val_df: pd.DataFrame, label_space: LabelSpace, cfg: TrainConfig,
    out_dir: Path, resume: bool,
) -> Path:  # fmt: skip
    """The workers' job: the train/validation rows (Parquet keeps the dtypes), the settings, where to write."""
    folder.mkdir(parents=True, exist_ok=True)
    train_df.to_parquet(folder / "train.parquet", index=False)
    val_df.to_parquet(folder / "val.parquet", index=False)
    job = {
        "train": str(folder / "train.parquet"),
        "val": str(folder / "val.parquet"),
        "label_space": label_space.to_dict(),
        "cfg": cfg.to_dict(),
        "out_dir": str(out_dir),
        "resume": bool(resume),
    }
    path = folder / "job.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(job, indent=2)))
    return path


def _fresh_folder(folder: Path, resume: bool) -> None:
    """``ddp/`` ready for a launch: the epoch file and result of an earlier launch go; the rank records and logs
    stay on resume (they cover the run's earlier epochs) and go otherwise."""
    if not resume and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (EPOCHS_FILE, RESULT_FILE):
        (folder / name).unlink(missing_ok=True)


def _check_resumable(out_dir: Path, resume: bool) -> None:
    """Read ``last.pt`` once here before the workers do, so a corrupt one fails as in one process (moved aside,
    named) instead of in every rank at once."""
    last = out_dir / "checkpoints" / "last.pt"
    if resume and last.is_file():
        resumable_state(last)


def launch(
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    label_space: LabelSpace,
    cfg: TrainConfig,
    out_dir: Path,
    on_epoch: Callable[[int, dict], None] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Run ``cfg.processes`` training processes with torchrun and wait; ``on_epoch`` here as rank 0 finishes each
    epoch. Raises :class:`DistributedTrainingError` when a rank fails."""
    folder = out_dir / LAUNCH_DIR
    _check_resumable(out_dir, resume)
    _fresh_folder(folder, resume)
    job = write_job(folder, train_df, val_df, label_space, cfg, out_dir, resume)
    command = torchrun_command(cfg.processes, job, folder / "logs")
    log.info("launching %d training processes: %s", cfg.processes, shown_command(command))
    start = time.perf_counter()
    run_workers(command, folder, cfg.processes, on_epoch)
    result = _read_result(folder)
    result.distributed = {**rank_summary(folder), "command": shown_command(command)}
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def run_workers(
    command: list[str], folder: Path, processes: int, on_epoch: Callable[[int, dict], None] | None = None
) -> None:
    """Run a torchrun ``command`` (its console in ``folder/torchrun.log``, relayed to this log), following
    ``folder/epochs.jsonl`` for ``on_epoch``; raises :class:`DistributedTrainingError` naming the failed rank."""
    with (folder / CONSOLE_FILE).open("w", encoding="utf-8") as console:
        proc = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=_worker_env(processes))
        try:
            _follow(proc, folder, on_epoch)
        finally:
            _stop(proc)
    if proc.returncode != 0:
        raise DistributedTrainingError(failure_message(folder, proc.returncode, processes))


def _worker_env(processes: int) -> dict[str, str]:
    """The parent's environment, with CPU threads split between the processes (torchrun would set 1)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // processes)))
    return env


def _follow(proc: subprocess.Popen, folder: Path, on_epoch: Callable[[int, dict], None] | None) -> None:
    """Until ``proc`` exits: relay its console lines to this log and hand rank 0's finished epochs to ``on_epoch``."""
    console, epochs = _LineReader(folder / CONSOLE_FILE), _LineReader(folder / EPOCHS_FILE)
    while True:
        done = proc.poll() is not None
        for line in console.new_lines():
            log.info("%s", line)
        for line in epochs.new_lines():
            figures = json.loads(line)
            if on_epoch is not None:
                on_epoch(int(figures["epoch"]), figures)
        if done:
            return
        time.sleep(POLL_S)


def _stop(proc: subprocess.Popen) -> None:
    """Make sure torchrun (and, through it, its workers) is gone: SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _LineReader:
    """The complete lines appended to a file since the last call (a partial last line waits for its end)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_lines(self) -> list[str]:
        if not self.path.is_file():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [line for line in data[:end].decode("utf-8", "replace").splitlines() if line.strip()]


def _read_result(folder: Path) -> TrainResult:
    data = json.loads((folder / RESULT_FILE).read_text())
    data["best_checkpoint"], data["last_checkpoint"] = Path(data["best_checkpoint"]), Path(data["last_checkpoint"])
    return TrainResult(**data)


def rank_summary(folder: Path) -> dict[str, Any]:
    """What the ranks' records (``ddp/rank-<r>.jsonl``) say: world size, backend, and per rank its pid, host,
    device and the images it trained on."""
    ranks, world = [], 0
    for path in sorted(folder.glob("rank-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            last, world = lines[-1], max(world, int(lines[-1]["world_size"]))
            keep = ("rank", "pid", "host", "device", "backend")
            ranks.append({**{k: last[k] for k in keep}, "images": sum(int(r["images"]) for r in lines)})
    return {"world_size": world, "backend": ranks[0]["backend"] if ranks else None, "ranks": ranks}


_ROOT_CAUSE = re.compile(r"Root Cause.*?rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)\s*exitcode\s*:\s*(-?\d+)", re.S)


def failure_message(folder: Path, returncode: int, processes: int) -> str:
    """Which rank failed first (torchrun's "Root Cause"), its exit code and the end of its stderr."""
    console = (folder / CONSOLE_FILE).read_text(errors="replace") if (folder / CONSOLE_FILE).is_file() else ""
    found = _ROOT_CAUSE.search(console)
    if found is None:
        return f"torchrun exited with {returncode}; its output ends:\n{_tail(console)}\n(logs: {folder})"
    rank, local_rank, code = (int(g) for g in found.groups())
    logs = sorted((folder / "logs").glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    stderr = logs[-1].read_text(errors="replace") if logs else console
    return (
        f"training process rank {rank} of {processes} failed (exit code {code}); its stderr ends:\n{_tail(stderr)}\n"
        f"(logs: {folder / 'logs'})"
    )


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ the worker


def _epoch_writer(folder: Path) -> Callable[[int, dict], None]:
    """Rank 0's ``on_epoch``: one JSON line an epoch in ``ddp/epochs.jsonl``, flushed (the parent follows it)."""

    def write(epoch: int, figures: dict) -> None:
        with (folder / EPOCHS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({**figures, "epoch": epoch}) + "\n")

    return write


def _worker_cache(cfg: TrainConfig, local_world: int) -> ImageCache | None:
    """The settings' image cache, its memory tier split between this machine's processes (the disk tier is
    shared: its writes are atomic)."""
    if not cfg.cache_images:
        return None
    cache = ImageCache.from_settings(load_settings())
    return ImageCache(cache.root, cache.max_bytes_memory // max(1, local_world), cache.max_bytes_disk)


@record
def main(argv: list[str] | None = None) -> int:
    """One torchrun worker: join the group, train its shard with ``train_model``; rank 0 writes the result."""
    parser = argparse.ArgumentParser(description="a steelqc data-parallel training process (run by torchrun)")
    parser.add_argument("--job", type=Path, required=True)
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text())
    rank = os.environ.get("RANK", "?")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(name)s: %(message)s", stream=sys.stderr)
    cfg = TrainConfig.from_dict(job["cfg"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.processes))
    cfg.threads = cfg.threads or max(1, available_cpus() // local_world)
    ctx = init_from_env(cfg.device, cfg.ddp_backend)
    try:
        folder = Path(job["out_dir"]) / LAUNCH_DIR
        log.info("rank %d of %d on %s (%s, %d threads)", ctx.rank, ctx.world_size, ctx.device, ctx.backend, cfg.threads)
        result = train_model(
            pd.read_parquet(job["train"]), pd.read_parquet(job["val"]), LabelSpace.from_dict(job["label_space"]),
            cfg, Path(job["out_dir"]), on_epoch=_epoch_writer(folder) if ctx.is_main else None,
            resume=bool(job["resume"]), progress=False, image_cache=_worker_cache(cfg, local_world), dist=ctx,
        )  # fmt: skip
        if ctx.is_main:
            text = json.dumps(result.to_dict(), default=str)
            atomic_write(folder / RESULT_FILE, lambda tmp: tmp.write_text(text))
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
