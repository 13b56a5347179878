#!/usr/bin/env bash
# Create the process work pools the deployments use and the alert automations (idempotent; alerts
# only when DRYWALL_ALERT_WEBHOOK_URL is set). Needs PREFECT_API_URL.
set -euo pipefail
for pool in cpu gpu; do
  if prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool '$pool' exists"
  else
    prefect work-pool create "$pool" --type process
  fi
done
drywall alerts setup
