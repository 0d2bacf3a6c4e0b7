#!/usr/bin/env bash
# A look at the UI: start the servers, register the deployments, run the pipeline with manual approval, and take
# headless Chromium screenshots of the paused flow run (with its approval request) and of the deployments page.
# Then approve the run from the command line (as reviewer "ml-lead") and stop the servers.
#
#   make ui-screenshots          (STEELQC_HOME defaults to .steelqc/ui-screenshots; screenshots go to the run folder)
#
# Needs Debian's chromium: installed here with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export STEELQC_HOME=${STEELQC_HOME:-$PWD/.steelqc/ui-screenshots}
export PREFECT_SERVER_ANALYTICS_ENABLED=false NO_ALBUMENTATIONS_UPDATE=1
export STEELQC_ACTOR=${STEELQC_ACTOR:-nightly-scheduler}   # who starts the run (and so may not approve it)
STEELQC=${STEELQC:-.venv/bin/steelqc}
N_IMAGES=${N_IMAGES:-800}   # as `make demo`: ~26 test cracks, so one miss still passes the recall gate
mkdir -p "$STEELQC_HOME"
log=$STEELQC_HOME/ui-screenshots.log
: >"$log"

chromium_bin() { command -v chromium || command -v chromium-browser || true; }
if [[ -z $(chromium_bin) ]]; then
  echo "installing chromium (apt-get)..." >&2
  if [[ $(id -u) == 0 ]]; then apt-get install -y chromium >>"$log" 2>&1 || { apt-get update >>"$log" 2>&1 && apt-get install -y chromium >>"$log" 2>&1; }
  else sudo apt-get install -y chromium >>"$log" 2>&1; fi
fi
CHROMIUM=$(chromium_bin)
[[ -n $CHROMIUM ]] || { echo "chromium is not installed and apt-get failed; see $log" >&2; exit 1; }

stop_all() {
  [[ -n ${train_pid:-} ]] && kill "$train_pid" 2>/dev/null || true
  [[ -n ${serve_pid:-} ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  "$STEELQC" server stop >/dev/null 2>&1 || true
}
trap stop_all EXIT

"$STEELQC" server start --json >"$STEELQC_HOME/servers.json"
ui=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ui"]["prefect"])' "$STEELQC_HOME/servers.json")
export PREFECT_API_URL=$ui/api
"$STEELQC" serve --json >"$STEELQC_HOME/deployments.json" 2>>"$log" &   # schedules live while we look
serve_pid=$!

data=$STEELQC_HOME/data-n$N_IMAGES
[[ -f $data/train.csv ]] || "$STEELQC" synth --out "$data" --n-images "$N_IMAGES" --seed 42 \
  --mix "0=0.28,1=0.22,2=0.16,3=0.20,4=0.14" --json >/dev/null 2>>"$log"

echo "training with manual approval (a few minutes on CPU)..." >&2
"$STEELQC" train --data "$data" --approval manual --height 96 --width 608 --epochs 6 --json \
  >"$STEELQC_HOME/train.json" 2>>"$log" &
train_pid=$!

flow_run=""
for _ in $(seq 1 1200); do
  if ! kill -0 "$train_pid" 2>/dev/null; then
    echo "the run ended without pausing (did its gates fail?); see $STEELQC_HOME/train.json and $log" >&2; exit 1
  fi
  flow_run=$(grep -o 'awaiting-approval.*/runs/flow-run/[0-9a-f-]\{36\}' "$log" | grep -o '[0-9a-f-]\{36\}$' | tail -1 || true)
  [[ -n $flow_run ]] && break
  sleep 1
done
[[ -n $flow_run ]] || { echo "no paused run after 20 minutes; see $log" >&2; exit 1; }
sleep 3
run_dir=$(ls -td "$STEELQC_HOME"/runs/*/ 2>/dev/null | head -1)   # the paused run's folder (newest)
shots=${run_dir:-$STEELQC_HOME/}screenshots
mkdir -p "$shots"

shoot() {  # shoot URL FILE
  local profile
  profile=$(mktemp -d)
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
    --window-size=1600,1000 --virtual-time-budget=20000 --screenshot="$2" "$1" >>"$log" 2>&1
  rm -rf "$profile"
  echo "$2"
}
shoot "$ui/runs/flow-run/$flow_run" "$shots/paused-flow-run.png"
artifact=$(python3 - "$PREFECT_API_URL" <<'PY'
import json, sys, urllib.request
query = {"artifacts": {"key": {"any_": ["approval-request"]}}, "sort": "CREATED_DESC", "limit": 1}
request = urllib.request.Request(sys.argv[1] + "/artifacts/filter", json.dumps(query).encode(),
                                 {"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request))[0]["id"])
PY
)
shoot "$ui/artifacts/artifact/$artifact" "$shots/approval-request.png"
shoot "$ui/deployments" "$shots/deployments.png"

"$STEELQC" registry approve "$flow_run" --reviewer ml-lead --comment "screenshots taken; approved" --json \
  >"$STEELQC_HOME/approve.json" 2>>"$log"
wait "$train_pid"; train_pid=""
shoot "$ui/runs/flow-run/$flow_run" "$shots/approved-flow-run.png"
echo "screenshots in $shots" >&2
