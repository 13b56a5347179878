#!/usr/bin/env bash
# PostgreSQL for the production-path test (Prefect's production database): Debian's package.
# Idempotent: does nothing when initdb is already there; installs with apt-get when it can.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing PostgreSQL (Debian's postgresql package) for the production-path test"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
else
  echo "PostgreSQL not found: install Debian's postgresql package (sudo apt-get install postgresql);" \
       "the production-path test skips without it (and fails when CI=true)" >&2
fi
