"""Where exports come from: Roboflow (SDK), a local export folder, or a synthetic sample."""

from drywall_core.data.sources.local import copy_local_export
from drywall_core.data.sources.roboflow_pull import already_pulled, latest_version, pull_roboflow
from drywall_core.data.sources.synthetic import generate_synthetic

__all__ = ["already_pulled", "copy_local_export", "generate_synthetic", "latest_version", "pull_roboflow"]
