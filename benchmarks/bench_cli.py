"""What the benchmarks that drive the `steelqc` CLI share: the command, relaxed gates, one JSON call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STEELQC = str(Path(sys.executable).with_name("steelqc"))
# a speed benchmark's champion only has to exist, not to be good
RELAXED_GATES = {
    "STEELQC_GATES__MACRO_F1_MIN": "0",
    "STEELQC_GATES__CRITICAL_RECALL_MIN": "0",
    "STEELQC_GATES__CRITICAL_PRECISION_MIN": "0",
    "STEELQC_GATES__GLARE_DELTA_F1_MAX": "1",
    "STEELQC_GATES__MIN_TEST_SUPPORT_PER_CLASS": "1",
    "STEELQC_GATES__CHAMPION_MACRO_F1_TOLERANCE": "1",
    "STEELQC_APPROVAL": "auto",
}


def steelqc_json(env: dict, *args: str, timeout: float = 3600) -> dict:
    """``steelqc ARGS --json`` in ``env``: its JSON object; the run's stderr tail and an exit on failure."""
    proc = subprocess.run([STEELQC, *args, "--json"], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"steelqc {' '.join(args)} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
