"""Prefect flows: ``ingest``, ``train``, ``retrain``, ``evaluate-champion`` (one module per stage)."""

import os

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "drywall_core")
