"""Dataset registry: maps a Roboflow dataset to the prompt it teaches and its label strength.

The mapping is configuration (``datasets.yaml``), so a third dataset is a YAML entry, not code.
"""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, field_validator

from drywall_core.base.errors import InputError

LabelStrength = Literal["strong", "weak"]


class RoboflowProject(BaseModel):
    """Where a dataset is published: the nightly flows pull its latest version from here."""

    workspace: str = Field(min_length=1)
    project: str = Field(min_length=1)


class DatasetSpec(BaseModel):
    """One dataset: its prompt, synonyms for augmentation, and how its labels were drawn."""

    name: str
    prompt: str
    synonyms: list[str] = Field(min_length=5)
    label_strength: LabelStrength
    categories: str = Field(description="Case-insensitive regex every used category name matches.")
    projects: list[str] = Field(default_factory=list)
    roboflow: RoboflowProject | None = Field(None, description="Published on Roboflow here (nightly flows).")
    label: str | None = Field(None, description="Class name of pre-annotations sent to Roboflow (default: name).")
    measure: Literal["lines", "area"] = Field(
        "area", description="How a mask of this prompt is measured: crack-like lines (length, width) or area share."
    )

    @property
    def class_name(self) -> str:
        return self.label or self.name

    @field_validator("categories")
    @classmethod
    def _valid_regex(cls, v: str) -> str:
        re.compile(v)
        return v

    @cached_property
    def category_regex(self) -> re.Pattern[str]:
        return re.compile(self.categories, re.IGNORECASE)

    def expects_category(self, name: str) -> bool:
        return bool(self.category_regex.search(name or ""))

    @property
    def prompts(self) -> list[str]:
        """Canonical prompt first, then the other synonyms (deduplicated, order kept)."""
        return list(dict.fromkeys([self.prompt, *self.synonyms]))


class DatasetRegistry(BaseModel):
    datasets: dict[str, DatasetSpec]

    @property
    def canonical_prompts(self) -> list[str]:
        """Every dataset's canonical prompt: what the model is asked about a field photo."""
        return [spec.prompt for spec in self.datasets.values()]

    def get(self, name: str) -> DatasetSpec:
        try:
            return self.datasets[name]
        except KeyError:
            known = ", ".join(sorted(self.datasets))
            raise InputError(f"unknown dataset '{name}' (known: {known})") from None

    def by_project(self, project: str) -> DatasetSpec | None:
        slug = _slug(project)
        for spec in self.datasets.values():
            known = {_slug(p) for p in spec.projects} | ({_slug(spec.roboflow.project)} if spec.roboflow else set())
            if slug == _slug(spec.name) or slug in known:
                return spec
        return None

    def measures_lines(self, prompt: str) -> bool:
        """Whether masks of ``prompt`` are measured as lines (cracks: count, length, width)."""
        return any(spec.measure == "lines" and prompt in spec.prompts for spec in self.datasets.values())

    def by_categories(self, names: list[str]) -> DatasetSpec | None:
        """The one dataset whose category pattern matches all the given names, if exactly one."""
        hits = [s for s in self.datasets.values() if names and all(s.expects_category(n) for n in names)]
        return hits[0] if len(hits) == 1 else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_registry(path: Path | None = None) -> DatasetRegistry:
    """Load the registry from ``path`` or the packaged ``datasets.yaml``."""
    if path is None:
        text = resources.files("drywall_core").joinpath("datasets.yaml").read_text()
        where = "datasets.yaml (packaged)"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InputError(f"{path}: cannot read dataset registry ({exc.strerror})") from exc
        where = str(path)
    try:
        raw = yaml.safe_load(text) or {}
        entries = raw["datasets"]
        return DatasetRegistry(datasets={name: DatasetSpec(name=name, **body) for name, body in entries.items()})
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{where}: invalid dataset registry: {exc}") from exc
