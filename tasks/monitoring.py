"""Monitoring over time: add a run to the model's Evidently project without failing the stage."""

from __future__ import annotations

from collections.abc import Callable

from prefect import get_run_logger

from drywall_core.config import get_settings
from drywall_core.datasets import load_registry


def record(what: str, add: Callable[[str, str, list[str]], str]) -> str | None:
    """Call ``add(target, model name, prompts)``; an unreachable workspace is a warning, not a failure:
    the stage's own result (report, predictions, metrics) is already stored."""
    s = get_settings()
    prompts = load_registry(s.datasets_file).canonical_prompts
    try:
        run_id = add(s.monitoring_target, s.model_name, prompts)
    except Exception as exc:  # noqa: BLE001 - monitoring must not undo a finished stage
        get_run_logger().warning(
            "%s not added to Evidently at %s: %s: %s", what, s.monitoring_target, type(exc).__name__, exc
        )
        return None
    get_run_logger().info("%s added to Evidently project '%s' at %s", what, s.model_name, s.monitoring_target)
    return run_id
