"""Annotation validation with a Great Expectations suite, one DataFrame per split.

Every check is a GX expectation over a column of :func:`drywall_core.data.annotations.split_frame`;
this module adds what GX does not: a message a person can act on, naming the annotation file,
the image file and the annotation id of a few offending rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from drywall_core.base.config import Settings
from drywall_core.base.errors import InputError
from drywall_core.base.fsutil import atomic_write_text
from drywall_core.data.annotations import split_frame
from drywall_core.data.datasets import DatasetRegistry, DatasetSpec
from drywall_core.data.docs_assets import localize
from drywall_core.data.exports import Export, Split

log = logging.getLogger(__name__)
EXAMPLES = 3


@dataclass(frozen=True)
class CheckContext:
    spec: DatasetSpec
    known_category_ids: list[Any]
    settings: Settings


@dataclass(frozen=True)
class Check:
    """One expectation plus how to explain its failure."""

    key: str
    message: Callable[[CheckContext], str]
    build: Callable[[CheckContext], Any]  # -> gx Expectation
    unit: str = "annotations"
    show: str | None = None  # column whose value is quoted in examples


def _checks() -> list[Check]:
    import great_expectations as gx

    e = gx.expectations

    def const(text: str) -> Callable[[CheckContext], str]:
        return lambda _c: text

    def positive(col: str) -> Callable[[CheckContext], Any]:
        return lambda _c: e.ExpectColumnValuesToBeBetween(column=col, min_value=0, strict_min=True)

    def within_tol(col: str) -> Callable[[CheckContext], Any]:
        return lambda c: e.ExpectColumnValuesToBeBetween(column=col, max_value=c.settings.bbox_tolerance_px)

    def matches_file(dim: str) -> Check:
        return Check(
            f"{dim}_matches_file",
            const(f"recorded {dim} differs from the image file's"),
            lambda _c: e.ExpectColumnPairValuesToBeEqual(
                column_A=dim, column_B=f"file_{dim}", ignore_row_if="either_value_is_missing"
            ),
            "images",
            dim,
        )

    def strength_kinds(c: CheckContext) -> Any:
        if c.spec.label_strength == "strong":
            mostly = 1.0 - c.settings.max_bbox_only_share_strong
            return e.ExpectColumnValuesToBeInSet(column="kind", value_set=["polygon", "rle"], mostly=mostly)
        return e.ExpectColumnValuesToBeInSet(column="kind", value_set=["bbox"])

    def strength_msg(c: CheckContext) -> str:
        if c.spec.label_strength == "strong":
            share = c.settings.max_bbox_only_share_strong
            return (
                f"annotation kind inconsistent with strong labels of '{c.spec.name}' "
                f"(polygon/RLE expected; at most {share:.0%} box-only)"
            )
        return f"annotation kind inconsistent with weak labels of '{c.spec.name}' (box only expected)"

    return [
        Check(
            "entry_is_object",
            const("entry unusable"),
            lambda _c: e.ExpectColumnValuesToBeNull(column="entry_error"),
            "entries",
            "entry_error",
        ),
        Check(
            "file_name_inside_export",
            const("file_name is not a relative path inside the export folder"),
            lambda _c: e.ExpectColumnValuesToBeInSet(column="file_inside", value_set=[True]),
            "images",
        ),
        Check(
            "mask_name_unique",
            const("two images share a file stem, so their masks would overwrite each other"),
            lambda _c: e.ExpectColumnValuesToBeUnique(column="mask_name"),
            "images",
            "mask_name",
        ),
        Check(
            "image_size_valid",
            const("image width/height missing or not a positive whole number"),
            lambda _c: e.ExpectColumnValuesToBeInSet(column="size_valid", value_set=[True]),
            "images",
            "size_raw",
        ),
        Check(
            "segmentation_renderable",
            const("segmentation cannot be rendered"),
            lambda _c: e.ExpectColumnValuesToBeNull(column="seg_error"),
            show="seg_error",
        ),
        Check(
            "annotation_id_unique",
            const("duplicate annotation id"),
            lambda _c: e.ExpectColumnValuesToBeUnique(column="ann_id"),
            show="ann_id",
        ),
        Check(
            "image_id_unique",
            const("duplicate image id"),
            lambda _c: e.ExpectColumnValuesToBeUnique(column="image_entry_id"),
            "images",
            "image_id",
        ),
        Check(
            "image_listed",
            const("annotation refers to an image id not listed in 'images'"),
            lambda _c: e.ExpectColumnValuesToNotBeNull(column="file_name"),
            show="image_id",
        ),
        Check(
            "image_file_present",
            const("image file missing"),
            lambda _c: e.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True]),
            "images",
        ),
        Check(
            "image_decodable",
            const("image file not decodable (truncated or corrupt)"),
            lambda _c: e.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
            "images",
            "decode_error",
        ),
        matches_file("width"),
        matches_file("height"),
        Check(
            "bbox_wellformed",
            const("bbox is not a list of 4 numbers"),
            lambda _c: e.ExpectColumnValuesToBeInSet(column="bbox_wellformed", value_set=[True]),
        ),
        Check("bbox_width_positive", const("bbox width not positive"), positive("bbox_w"), show="bbox_w"),
        Check("bbox_height_positive", const("bbox height not positive"), positive("bbox_h"), show="bbox_h"),
        Check(
            "bbox_inside_image",
            lambda c: f"bbox extends outside the image (tolerance {c.settings.bbox_tolerance_px:g} px)",
            within_tol("bbox_overflow_px"),
            show="bbox_overflow_px",
        ),
        Check(
            "category_known",
            const("category id not listed in the export's categories"),
            lambda c: e.ExpectColumnValuesToBeInSet(column="category_id", value_set=c.known_category_ids),
            show="category_id",
        ),
        Check(
            "category_expected",
            lambda c: f"category not expected by dataset '{c.spec.name}' (pattern '{c.spec.categories}')",
            lambda c: e.ExpectColumnValuesToMatchRegex(column="category_name", regex=f"(?i).*(?:{c.spec.categories})"),
            show="category_name",
        ),
        Check(
            "polygon_even_coordinates",
            const("polygon ring with an odd number of coordinates"),
            lambda _c: e.ExpectColumnValuesToBeBetween(column="ring_odd_count", max_value=0),
        ),
        Check(
            "polygon_min_points",
            const("polygon ring with fewer than 3 points"),
            lambda _c: e.ExpectColumnValuesToBeBetween(column="ring_min_points", min_value=3),
            show="ring_min_points",
        ),
        Check(
            "polygon_inside_image",
            lambda c: f"polygon extends outside the image (tolerance {c.settings.bbox_tolerance_px:g} px)",
            within_tol("poly_overflow_px"),
            show="poly_overflow_px",
        ),
        Check("area_positive", const("annotation area not positive"), positive("area"), show="area"),
        Check("kind_matches_label_strength", strength_msg, strength_kinds, show="kind"),
        Check(
            "empty_image_share",
            lambda c: f"share of images without annotations above {c.settings.max_empty_image_share:.0%}",
            lambda c: e.ExpectColumnMeanToBeBetween(column="empty_image", max_value=c.settings.max_empty_image_share),
            "images",
        ),
    ]


@dataclass
class Failure:
    check: str
    message: str
    count: int | None
    unit: str
    examples: list[str] = field(default_factory=list)
    observed: float | None = None

    def line(self, where: str) -> str:
        if self.count is None:
            seen = "nothing to measure" if self.observed is None else f"{self.observed:.1%}"
            return f"{where}: {self.message}: observed {seen}"
        ex = "; ".join(self.examples)
        return f"{where}: {self.message}: {self.count} {self.unit}" + (f", e.g. {ex}" if ex else "")


@dataclass
class SplitResult:
    split: str
    annotation_file: str
    rows: int
    images: int
    annotations: int
    success: bool
    failures: list[Failure] = field(default_factory=list)


@dataclass
class ValidationReport:
    export: str
    dataset: str
    success: bool
    splits: list[SplitResult]
    data_docs: str | None = None

    def lines(self) -> list[str]:
        return [f.line(s.annotation_file) for s in self.splits for f in s.failures]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def _plain(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _example(row: pd.Series, show: str | None) -> str:
    if show == "entry_error":
        return str(row.get("entry_error"))
    name = row.get("file_name")
    parts = [f"image '{name}'" if isinstance(name, str) else f"image id {_plain(row.get('image_id'))}"]
    ann = row.get("ann_id")
    if ann is not None and not (isinstance(ann, float) and pd.isna(ann)):
        parts.append(f"annotation {_plain(ann)}")
    if show and show not in ("image_id", "ann_id"):
        val = row.get(show)
        if isinstance(val, float) and val.is_integer():
            val = int(val)
        parts.append(f"{show}={val}")
    return " ".join(parts)


def resolve_dataset(export: Export, registry: DatasetRegistry, name: str | None = None) -> DatasetSpec:
    """The dataset an export belongs to: explicit name, else project slug, else category names."""
    if name:
        return registry.get(name)
    spec = registry.by_project(export.guess_project())
    if spec:
        return spec
    names = sorted({n for s in export.splits.values() for n in s.used_category_names()})
    spec = registry.by_categories(names)
    if spec:
        return spec
    raise InputError(
        f"{export.root}: cannot tell which dataset this export is (project "
        f"'{export.guess_project()}', categories {names}); pass --dataset"
    )


class _GX:
    """An ephemeral GX context with one pandas asset per split and an optional docs site."""

    def __init__(self, docs_dir: Path | None) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx

        # GX pins some of its loggers to INFO; keep the CLI's stderr for real problems.
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        self.gx = gx
        self.ctx = gx.get_context(mode="ephemeral")
        with contextlib.suppress(Exception):  # cosmetic only: no metric progress bars
            self.ctx.variables.progress_bars = {"globally": False}
        self.ds = self.ctx.data_sources.add_pandas("exports")
        self.site = None
        if docs_dir is not None:
            self.site = "drywall"
            self.ctx.add_data_docs_site(
                site_name=self.site,
                site_config={
                    "class_name": "SiteBuilder",
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(docs_dir),
                    },
                },
            )

    def run(self, name: str, df: pd.DataFrame, expectations: list[Any]) -> list[Any]:
        gx = self.gx
        asset = self.ds.add_dataframe_asset(name)
        batch = asset.add_batch_definition_whole_dataframe(f"{name}-all")
        suite = self.ctx.suites.add(gx.ExpectationSuite(name=f"{name}-annotations"))
        for exp in expectations:
            suite.add_expectation(exp)
        vd = self.ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name}-validation", data=batch, suite=suite)
        )
        actions = []
        if self.site:
            actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[self.site])]
        cp = self.ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"{name}-checkpoint",
                validation_definitions=[vd],
                actions=actions,
                result_format={"result_format": "COMPLETE"},
            )
        )
        result = cp.run(batch_parameters={"dataframe": df})
        (vr,) = result.run_results.values()
        return list(vr.results)


def validate_export(
    export: Export,
    spec: DatasetSpec,
    settings: Settings,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Validate every split of ``export`` against the suite; never raises on bad content."""
    checks = _checks()
    runner = _GX(docs_dir)
    results: list[SplitResult] = []
    for split in export.splits.values():
        df = split_frame(split, max_pixels=settings.max_image_pixels)
        if not split.images:
            # nothing to train or evaluate on; GX cannot measure an empty table either
            empty = Failure("split_has_images", "split lists no images", 0, "images")
            results.append(_split_result(split, df, [empty]))
            continue
        known = [c.get("id") for c in split.categories if isinstance(c, dict)]
        ctx = CheckContext(spec=spec, known_category_ids=known, settings=settings)
        gx_results = runner.run(f"{spec.name}-{split.name}", df, [c.build(ctx) for c in checks])
        failures = []
        for check, res in zip(checks, gx_results, strict=True):
            if res.success:
                continue
            r = res.result or {}
            idx = r.get("unexpected_index_list") or []
            examples = [_example(df.loc[i], check.show) for i in idx[:EXAMPLES]]
            count = r.get("unexpected_count")
            obs = r.get("observed_value")
            failures.append(
                Failure(
                    check.key,
                    check.message(ctx),
                    None if count is None else int(count),
                    check.unit,
                    examples,
                    None if obs is None else float(obs),
                )
            )
        results.append(_split_result(split, df, failures))
    if docs_dir is not None:
        localize(docs_dir, settings.data_docs_assets)  # render without internet
    index = docs_dir / "index.html" if docs_dir else None
    return ValidationReport(
        export=str(export.root),
        dataset=spec.name,
        success=all(s.success for s in results),
        splits=results,
        data_docs=str(index) if index and index.exists() else None,
    )


def _split_result(split: Split, df: pd.DataFrame, failures: list[Failure]) -> SplitResult:
    return SplitResult(
        split=split.name,
        annotation_file=str(split.annotation_path),
        rows=len(df),
        images=len(split.images),
        annotations=len(split.annotations),
        success=not failures,
        failures=failures,
    )


def write_report(report: ValidationReport, path: Path) -> None:
    """Write the JSON report atomically (temporary name, then rename)."""
    atomic_write_text(path, report.to_json())


def docs_dir_for(report_path: Path) -> Path:
    """Data Docs live beside the report: ``<report stem>_data_docs/``."""
    return report_path.parent / f"{report_path.stem}_data_docs"


def fresh_docs_dir(report_path: Path) -> Path:
    """An empty Data Docs folder beside the report (absolute: GX refuses relative site folders)."""
    d = docs_dir_for(Path(report_path).resolve())
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d
