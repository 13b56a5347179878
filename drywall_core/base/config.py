"""One settings object for the whole project (pydantic-settings, ``DRYWALL_`` env prefix).

Every tunable lives here so that flows, tasks and the CLI read the same values and an operator
can override any of them from the environment (``DRYWALL_MASK_WORKERS=4``) or a ``.env`` file.
"""

from __future__ import annotations

import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrainConfig(BaseModel):
    """Fine-tuning hyper-parameters (defaults follow the usual CLIPSeg decoder recipes)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    weak_weight: float = Field(0.5, ge=0, description="Loss weight of weak (box) labels, BCE only.")
    dice_weight: float = Field(1.0, ge=0, description="Weight of Dice for strong labels.")
    pos_weight: float | None = Field(None, gt=0, description="BCE positive-class weight (sparse masks).")
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(5, ge=1, description="Epochs without val mIoU improvement before stopping.")
    seed: int = 0
    flip: bool = Field(True, description="Also cache and train on horizontally flipped views.")
    cache_dtype: Literal["int8", "float16", "float32"] = Field(
        "int8", description="Activation cache: int8 with per-token scales (half of fp16's bytes), float16, float32."
    )
    cache_batch_size: int = Field(8, ge=1)


TRAIN_PROFILES: dict[str, dict[str, object]] = {
    # The defaults of TrainConfig are the production recipe for the real CLIPSeg decoder. A profile is
    # a named recipe for another situation, chosen explicitly (--profile, DRYWALL_TRAIN_PROFILE, or a
    # flow parameter), never a silent default.
    "tiny-demo": {"epochs": 20, "lr": 1e-2, "batch_size": 8, "patience": 20},  # the generated tiny model
}


def resolve_train_config(base: TrainConfig, profile: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """``base`` (settings), then the named profile, then explicit overrides."""
    from drywall_core.base.errors import InputError

    if profile and profile not in TRAIN_PROFILES:
        raise InputError(f"unknown training profile '{profile}' (known: {', '.join(sorted(TRAIN_PROFILES))})")
    return base.model_copy(update={**(TRAIN_PROFILES.get(profile or "", {})), **(overrides or {})})


class GateConfig(BaseModel):
    """Promotion gate: floors per prompt, no regression beyond a tolerance, a minimum improvement."""

    min_miou: float = Field(0.05, ge=0, le=1, description="Every prompt's mIoU must reach this.")
    min_dice: float = Field(0.05, ge=0, le=1, description="Every prompt's mean Dice must reach this.")
    max_regression: float = Field(0.02, ge=0, description="No prompt may fall more than this below the champion.")
    min_improvement: float = Field(0.005, ge=0, description="Mean mIoU must improve by at least this.")
    shadow_images: int = Field(
        20, ge=0, description="Latest field images both models predict before promotion (0 = no shadow run)."
    )
    min_shadow_agreement: float | None = Field(
        None, ge=0, le=1, description="Refuse a candidate whose mean mask IoU with the champion falls below this."
    )
    strong_disagreement_iou: float = Field(
        0.5, ge=0, le=1, description="Below this mask IoU an image counts as a strong disagreement."
    )


class LabelQueueConfig(BaseModel):
    """Active learning: how many uncertain field images go to Roboflow for labelling."""

    per_run: int = Field(20, ge=0, description="Images queued per predict-field run and prompt (0 = off).")
    per_day: int = Field(100, ge=0, description="Images queued per Roboflow project per UTC day, across runs.")
    diverse: bool = Field(True, description="Skip near-duplicates and spread a batch over the embedding space.")
    max_similarity: float = Field(
        0.95, gt=0, le=1, description="Image-embedding cosine similarity above which two photos are near-duplicates."
    )
    pool_factor: int = Field(3, ge=1, description="Diverse batches pick among this many x the batch most uncertain.")


class MeasureConfig(BaseModel):
    """Crack measurements (``drywall measure``, field summaries, the service's answer, evaluation)."""

    px_per_mm: float | None = Field(
        None, gt=0, description="Scale of site photos, pixels per millimetre: adds *_mm fields (per photo overrides)."
    )
    min_area_px: int = Field(9, ge=1, description="Regions smaller than this are specks, not cracks.")


class SliceConfig(BaseModel):
    """Slices of field photos (drift, field summaries, evaluation): site from the name, camera and week from EXIF."""

    site_pattern: str = Field(
        r"(?:^|/)sites/(?P<site>[^/]+)/",
        description="Regular expression with a `site` group, searched in each photo's S3 key or relative path.",
    )
    min_photos: int = Field(20, ge=2, description="A slice with fewer photos is listed, not tested.")

    @field_validator("site_pattern")
    @classmethod
    def _has_site_group(cls, v: str) -> str:
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        if "site" not in compiled.groupindex:
            raise ValueError("needs a named group (?P<site>...)")
        return v

    @property
    def site_regex(self) -> re.Pattern[str]:
        return re.compile(self.site_pattern)


class ServeConfig(BaseModel):
    """The prediction service (``drywall serve``): what it follows, how it batches, what it refuses."""

    host: str = Field("127.0.0.1", description="Bind address of `drywall serve`.")
    port: int = Field(8080, ge=1, le=65535, description="Port of `drywall serve`.")
    poll_s: float = Field(5.0, gt=0, description="Seconds between reads of the champion alias.")
    version: str | None = Field(None, description="Serve this model version instead of following the alias.")
    api_keys_file: Path | None = Field(
        None, description="One `sha256:<hex>` line per API key; unset: `drywall serve` needs --insecure-no-auth."
    )
    max_batch: int = Field(8, ge=1, description="Photos encoded together at most (concurrent requests coalesce).")
    max_wait_ms: float = Field(
        2.0, ge=0, description="How long a batch waits for more photos once it has one (those queued join anyway)."
    )
    max_body_bytes: int = Field(25_000_000, ge=1024, description="Largest request body (413 above).")
    max_prompts: int = Field(8, ge=1, description="Prompts per request (422 above).")
    max_prompt_chars: int = Field(200, ge=1, description="Characters per prompt (422 above).")
    rate_per_min: float = Field(600.0, gt=0, description="Requests per minute per API key (429 above).")
    rate_burst: int = Field(60, ge=1, description="Requests a key may send at once before the rate applies.")
    metrics_open: bool = Field(True, description="GET /metrics without an API key (Prometheus scrapes it).")
    warmup_images: int = Field(4, ge=0, description="Validation photos recorded with a version at publish time.")
    warmup_min_iou: float = Field(0.98, ge=0, le=1, description="Warm-up masks must match the recorded ones this well.")
    gallery_size: int = Field(24, ge=0, description="Recent field predictions the page shows.")
    capture: bool = Field(False, description="Store each photo sent (once, by sha256) under the field-images prefix.")
    capture_per_day: int = Field(1000, ge=0, description="Photos a replica captures per UTC day at most.")
    capture_days: int = Field(30, ge=1, description="Captured days kept; older ones are removed.")
    shadow_share: float = Field(0.0, ge=0, le=1, description="Share of requests also run on a challenger (0 = off).")
    shadow_version: str | None = Field(
        None, description="The challenger; unset: the newest version after the champion."
    )
    shadow_flush: int = Field(50, ge=1, description="Shadow comparisons per Evidently run.")


class Settings(BaseSettings):
    """Project configuration; see README "Configuration" for the full list."""

    model_config = SettingsConfigDict(env_prefix="DRYWALL_", env_file=".env", extra="ignore", env_nested_delimiter="__")

    # State
    home: Path = Field(default=Path(".drywall"), description="Root of everything written by default.")
    sample_data: Path = Field(
        default=Path("../shared/data"), description="Real Roboflow exports used by tests/benchmarks."
    )
    datasets_file: Path | None = Field(
        default=None, description="YAML dataset registry; the packaged datasets.yaml when unset."
    )

    # Roboflow
    roboflow_api_key: SecretStr | None = Field(default=None, description="Falls back to ROBOFLOW_API_KEY.")
    roboflow_api_url: str | None = Field(
        default=None, description="Roboflow API base URL (region or on-prem); the SDK default when unset."
    )
    pull_retries: int = Field(default=4, ge=0, description="Retries of a transient HTTP failure.")
    pull_backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles each time.")

    # Validation
    bbox_tolerance_px: float = Field(default=2.0, ge=0, description="Slack for boxes/polygons at the border.")
    max_empty_image_share: float = Field(
        default=0.05, ge=0, le=1, description="Largest share of images without annotations."
    )
    max_bbox_only_share_strong: float = Field(
        default=0.05, ge=0, le=1, description="Largest share of bbox-only annotations in a polygon dataset."
    )
    max_image_pixels: int = Field(default=64_000_000, description="Refuse images larger than this.")
    data_docs_assets: Path = Field(
        default_factory=lambda: Path(sys.prefix) / "share" / "drywall-docs",
        description="Offline copies of the Data Docs' CDN scripts and styles (make setup fetches them).",
    )

    # Masks and splits
    mask_workers: int = Field(default=0, ge=0, description="Processes for mask rendering; 0 = all cores.")
    split_seed: int = Field(default=42)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)

    # Artifact store / registry (S3 when a bucket is set, else $DRYWALL_HOME/registry)
    s3_bucket: str | None = Field(default=None, description="Bucket of the S3 artifact store.")
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket.")
    s3_endpoint_url: str | None = Field(default=None, description="Any S3-compatible endpoint; AWS when unset.")
    s3_region: str | None = Field(default=None)
    s3_addressing_style: Literal["path", "virtual", "auto"] = "path"
    s3_connect_timeout_s: float = Field(default=5.0, gt=0, description="Seconds to wait for an S3 connection.")
    s3_read_timeout_s: float = Field(default=30.0, gt=0, description="Seconds to wait for an S3 answer.")
    s3_max_attempts: int = Field(default=3, ge=1, le=10, description="Attempts per S3 call (retries + 1).")
    model_name: str = Field(default="clipseg-drywall", description="Registry name of the model.")
    gate: GateConfig = Field(default_factory=lambda: GateConfig())

    # Runs that end instead of hanging (the retrain flow waiting on the gpu pool's training run)
    train_crash_retries: int = Field(
        default=1, ge=0, le=5, description="Times a Crashed training run is started again (it resumes)."
    )
    api_outage_tolerance_s: float = Field(
        default=600.0, gt=0, description="How long a flow waits out an unreachable Prefect API before failing."
    )

    # Webhook receiver
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC secret of signed deliveries.")
    webhook_previous_secret: SecretStr | None = Field(
        default=None, description="Also accepted while senders move to a rotated secret."
    )
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8077

    # Local stack (drywall stack up): loopback ports
    stack_prefect_port: int = 4200
    stack_s3_port: int = 8333
    stack_database_url: str | None = Field(
        default=None,
        description="An existing PostgreSQL for the stack's Prefect server; unset: the stack runs its own.",
    )
    stack_database: Literal["postgres", "sqlite"] = Field(
        default="postgres",
        description="The stack's own Prefect database: PostgreSQL (Debian's package; SQLite locks under load).",
    )
    stack_postgres_port: int = 5434

    # Fan-out stages (mask rendering, drift features): Prefect's default runner, or Dask
    task_runner: Literal["default", "dask"] = Field(default="default", description="'dask': a local Dask cluster.")
    dask_address: str | None = Field(default=None, description="Scheduler of an existing Dask cluster (implies dask).")
    dask_workers: int = Field(default=0, ge=0, description="Workers of the local Dask cluster; 0 = all cores.")

    # Field images, drift and the loop back to labelling
    drift_model_signals: bool = Field(
        default=True,
        description="The drift flow adds the champion's foreground fraction and confidence per prompt as features.",
    )
    drift_share: float = Field(default=0.5, gt=0, le=1, description="Share of drifted features that means drift.")
    drift_decider: Literal["features", "embeddings", "either"] = Field(
        default="features",
        description="Which test decides drift_detected: image statistics, CLIP image embeddings, or either. "
        "bench/drift_power.py chose the statistics (Bonferroni): 5% false alarms, every planted shift caught at "
        "n=50; the embeddings are reported beside them (random weights here: re-run with real ones).",
    )
    drift_embedding_test: Literal["pca-ks", "mmd", "classifier", "distance", "ratio"] = Field(
        default="pca-ks", description="Evidently's embeddings-drift method for the image embeddings."
    )
    drift_feature_rule: Literal["bonferroni", "share"] = Field(
        default="bonferroni",
        description="Image statistics drift when any column drifts at p < 0.05/columns (bonferroni), or when "
        "DRYWALL_DRIFT_SHARE of them drift at p < 0.05 (share).",
    )
    field_images_prefix: str = Field(
        default="field-images/", description="Where field photos land in the bucket (drift, predictions, shadow)."
    )
    label_queue: LabelQueueConfig = Field(default_factory=LabelQueueConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    slices: SliceConfig = Field(default_factory=SliceConfig)
    evidently_workspace: Path | None = Field(
        default=None, description="Evidently workspace of drift and quality over time; $DRYWALL_HOME/evidently."
    )
    evidently_url: str | None = Field(
        default=None, description="An `evidently ui` service to add runs to (the stack's); else the workspace folder."
    )
    evidently_secret: SecretStr | None = Field(
        default=None,
        description="Secret of the Evidently service at evidently_url (the stack's runs behind it; never logged).",
    )
    stack_evidently_port: int = 8085
    alert_webhook_url: SecretStr | None = Field(
        default=None, description="Slack-compatible incoming webhook the alert automations post to."
    )

    # Prediction service (nested: DRYWALL_SERVE__POLL_S=2)
    serve: ServeConfig = Field(default_factory=lambda: ServeConfig())

    # Model and training (nested: DRYWALL_TRAIN__EPOCHS=30)
    base_model: str = Field(default="CIDAS/clipseg-rd64-refined", description="Hub id or local folder.")
    train: TrainConfig = Field(default_factory=TrainConfig)
    train_profile: str | None = Field(default=None, description="Named training recipe (TRAIN_PROFILES), if any.")
    inference_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where prediction runs: the GPU when one is visible (auto), or cpu / cuda."
    )
    inference_precision: Literal["fp32", "int8"] = Field(
        default="int8",
        description="Prediction and drift model signals on a CPU: int8 (quantized vision tower) or fp32.",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        """Resolved once, so every command and subprocess agrees where state lives."""
        return home.expanduser().resolve()

    @property
    def registry_root(self) -> Path:
        return self.home / "registry"

    @property
    def evidently_root(self) -> Path:
        return Path(self.evidently_workspace or self.home / "evidently").expanduser().resolve()

    @property
    def monitoring_target(self) -> str:
        """Where drift, field-prediction and evaluation runs go: the Evidently service, else the folder."""
        return self.evidently_url or str(self.evidently_root)

    @property
    def field_images_dir(self) -> Path:
        """Field photos on this host when no bucket is configured."""
        return self.home / "field-images"

    @property
    def cache_root(self) -> Path:
        return self.home / "cache" / "activations"

    @property
    def embeddings_root(self) -> Path:
        """Image embeddings by photo sha256, beside the activation cache (drywall_core.model.embeddings)."""
        return self.home / "cache" / "embeddings"

    def roboflow_key(self) -> str | None:
        """The Roboflow API key from DRYWALL_ROBOFLOW_API_KEY or ROBOFLOW_API_KEY (never logged)."""
        if self.roboflow_api_key is not None:
            return self.roboflow_api_key.get_secret_value()
        return os.environ.get("ROBOFLOW_API_KEY") or None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; call ``get_settings.cache_clear()`` after changing the environment."""
    return Settings()
