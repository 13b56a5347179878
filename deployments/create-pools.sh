#!/usr/bin/env bash
# Create the process work pools the deployments use (idempotent). Needs PREFECT_API_URL.
set -euo pipefail
for pool in cpu gpu; do
  if prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool '$pool' exists"
  else
    prefect work-pool create "$pool" --type process
  fi
done
