#!/usr/bin/env bash
# PostgreSQL for the production-path test (Prefect's production database): Debian's package.
exec bash "$(dirname "$0")/ensure-package.sh" postgresql "the production-path test" initdb '/usr/lib/postgresql/*/bin/initdb'
