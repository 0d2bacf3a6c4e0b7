"""How long the local servers take to come up and go down, and what they hold in memory; approval round trip.

    python benchmarks/servers.py [--repeats 2] [--json]

1. ``steelqc server start`` (Prefect + MLflow, SQLite, fresh STEELQC_HOME): wall time until both are healthy,
   resident memory of each server's process group, then ``steelqc server stop`` wall time;
2. the approval round trip on the running Prefect server: a tiny flow pauses with the approval form, the CLI's
   ``resume_flow_run`` sends the decision, and we time from resume to the flow having the input in hand
   (bounded below by ``approval_poll_s``, the flow's polling interval, set to 0.5 s here).

Prints the figures (and one JSON object with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

STEELQC = str(Path(sys.executable).with_name("steelqc"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(env: dict, *args: str) -> dict:
    out = subprocess.run([STEELQC, *args, "--json"], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def group_rss_mb(pid: int) -> float:
    """Resident memory of a process group (the server and its workers), from /proc."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ProcessLookupError, ValueError):
            continue
    return total / 1024


def _paused_flow(box: dict):
    """A flow that pauses for the approval form and notes when the decision arrived."""
    # Prefect reads PREFECT_API_URL once, when first imported: it (and steelqc.flows) is imported only once
    # approval_round_trip has set the URL of the server started above.
    from prefect import flow  # noqa: PLC0415
    from prefect.context import FlowRunContext  # noqa: PLC0415
    from prefect.flow_runs import pause_flow_run  # noqa: PLC0415

    from steelqc.flows.approval import ApprovalInput  # noqa: PLC0415

    @flow(name="bench-approval")
    def paused() -> None:
        box["id"] = FlowRunContext.get().flow_run.id
        answer = pause_flow_run(wait_for_input=ApprovalInput, timeout=120, poll_interval=0.5, key="bench")
        box["got"] = time.perf_counter()
        box["answer"] = answer

    return paused


def approval_round_trip(api_url: str, repeats: int) -> list[float]:
    """Seconds from resume_flow_run to the paused flow holding the decision."""
    os.environ["PREFECT_API_URL"] = api_url
    from prefect.flow_runs import resume_flow_run  # noqa: PLC0415  (after the URL: see _paused_flow)

    results: list[float] = []
    for _ in range(repeats):
        box: dict = {}

        paused = _paused_flow(box)
        thread = threading.Thread(target=paused)
        thread.start()
        from prefect import get_client  # noqa: PLC0415  (after the URL: see _paused_flow)

        with get_client(sync_client=True) as client:
            while "id" not in box or not client.read_flow_run(box["id"]).state.is_paused():
                time.sleep(0.2)
        sent = time.perf_counter()
        resume_flow_run(box["id"], run_input={"decision": "approve", "reviewer": "bench", "comment": ""})
        thread.join()
        assert box["answer"].reviewer == "bench"
        results.append(box["got"] - sent)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    starts, stops, rss = [], [], {"prefect": [], "mlflow": []}
    api_url = None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("STEELQC_", "PREFECT_API_URL"))},
                "STEELQC_HOME": f"{tmp}/home{i}",
                "STEELQC_PREFECT_PORT": str(free_port()),
                "STEELQC_MLFLOW_PORT": str(free_port()),
            }
            t0 = time.perf_counter()
            started = cli(env, "server", "start")
            starts.append(time.perf_counter() - t0)
            for name in rss:
                rss[name].append(group_rss_mb(started["servers"][name]["pid"]))
            if i == args.repeats - 1:
                api_url = started["ui"]["prefect"] + "/api"
                trips = approval_round_trip(api_url, 3)
            t0 = time.perf_counter()
            cli(env, "server", "stop")
            stops.append(time.perf_counter() - t0)
    figures = {
        "server_start_s": [round(s, 1) for s in starts],
        "server_stop_s": [round(s, 1) for s in stops],
        "rss_mb": {k: round(statistics.median(v)) for k, v in rss.items()},
        "approval_round_trip_s": [round(t, 2) for t in trips],
        "approval_poll_s": 0.5,
    }
    print(
        f"server start (Prefect + MLflow, until healthy): {', '.join(f'{s:.1f}' for s in starts)} s; "
        f"stop: {', '.join(f'{s:.1f}' for s in stops)} s",
        file=sys.stderr,
    )
    print(f"resident memory: Prefect {figures['rss_mb']['prefect']} MB, MLflow {figures['rss_mb']['mlflow']} MB",
          file=sys.stderr)  # fmt: skip
    print(f"approval round trip (resume -> flow has the decision): {figures['approval_round_trip_s']} s "
          f"(poll interval 0.5 s)", file=sys.stderr)  # fmt: skip
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
