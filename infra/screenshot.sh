#!/usr/bin/env bash
# Screenshots of the Prefect UI from the local stack (docs/): the latest completed retrain run and
# its gate artifact. Needs `drywall stack up`, a completed retrain run, and Debian's chromium.
# The stack's API demands basic auth: the queries send PREFECT_API_AUTH_STRING; the UI pages ask for
# it in the browser, so a headless screenshot of a stack shows the login until the UI is unlocked.
set -euo pipefail
source "${DRYWALL_HOME:-.drywall}/stack/stack.env"
ui="${PREFECT_API_URL%/api}"
q() { curl -sf -u "$PREFECT_API_AUTH_STRING" -X POST "$PREFECT_API_URL/$1" -H 'Content-Type: application/json' -d "$2"; }
run=$(q flow_runs/filter '{"flows":{"name":{"any_":["retrain"]}},"flow_runs":{"state":{"type":{"any_":["COMPLETED"]}}},"sort":"START_TIME_DESC","limit":1}' \
  | python3 -c 'import sys, json; print(json.load(sys.stdin)[0]["id"])')
art=$(q artifacts/filter '{"artifacts":{"key":{"any_":["retrain-gate"]}},"sort":"CREATED_DESC","limit":1}' \
  | python3 -c 'import sys, json; print(json.load(sys.stdin)[0]["id"])')
shot() {  # file, height, url
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --hide-scrollbars \
    --window-size="1600,$2" --virtual-time-budget=20000 --screenshot="$1" "$3" 2>/dev/null
}
mkdir -p docs
shot docs/prefect-ui-retrain-run.png 1100 "$ui/runs/flow-run/$run"
shot docs/prefect-ui-gate-artifact.png 700 "$ui/artifacts/artifact/$art"
echo "wrote docs/prefect-ui-retrain-run.png docs/prefect-ui-gate-artifact.png"
