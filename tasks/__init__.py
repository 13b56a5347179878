"""Thin Prefect tasks over ``drywall_core``: retries, caching, logging and UI artifacts only."""

import os

# route drywall_core's own log records into the Prefect run logs
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "drywall_core")
