"""requirements.lock agrees with pyproject.toml and with what is installed.

The lock pins every transitive dependency (``make lock`` refreshes it); ``make setup``, CI and the
container images install with ``-c requirements.lock``. These tests fail when a dependency is added
to or changed in ``pyproject.toml`` without refreshing the lock, or when the environment the tests
run in is not the locked one.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

LOCK = REPO / "requirements.lock"


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for n, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"requirements.lock:{n}: not a 'name==version' pin: {line!r}"
        pins[canonicalize_name(m[1])] = Version(m[2])
    return pins


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra if canonicalize_name(Requirement(r).name) != "drywall-qa"]
    return reqs


def _applies(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({**default_environment(), "extra": extra})


def test_lock_covers_every_pyproject_requirement() -> None:
    pins = _lock()
    problems = []
    for req in _project_requirements():
        if not _applies(req):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} is in pyproject.toml but not in requirements.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} in pyproject.toml, but requirements.lock pins {name}=={pins[name]}")
    assert not problems, "run `make lock`:\n" + "\n".join(problems)


def test_lock_pins_sqlalchemy_below_2_1() -> None:
    """Prefect 3.8.8's scheduler creates no run on SQLAlchemy 2.1 (the schedule test shows it)."""
    assert _lock()["sqlalchemy"] < Version("2.1")


def test_lock_is_closed_and_installed() -> None:
    """Every dependency of the project, transitively, is pinned, and installed at its pin."""
    pins = _lock()
    problems: list[str] = []
    seen: set[str] = set()
    todo = [(r, "") for r in _project_requirements()]
    while todo:
        req, extra = todo.pop()
        if not _applies(req, extra):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{name} (needed as {req}) is not pinned")
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={pins[name]} is locked but not installed")
            continue
        installed = Version(Version(dist.version).base_version) if "+" in dist.version else Version(dist.version)
        if installed != pins[name]:
            problems.append(f"{name} {dist.version} is installed, requirements.lock pins {pins[name]}")
        for wanted in [""] + sorted(req.extras):
            key = f"{name}[{wanted}]"
            if key in seen:
                continue
            seen.add(key)
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    assert not problems, "requirements.lock and this environment disagree (make lock, then make setup):\n" + "\n".join(
        sorted(set(problems))
    )


@pytest.mark.parametrize("dockerfile", ["infra/Dockerfile", "infra/Dockerfile.gpu"])
def test_images_install_from_the_lock(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c requirements.lock" in line for line in installs), installs
    assert "COPY requirements.lock" in text


def test_make_setup_installs_from_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "-c requirements.lock" in makefile and "requirements.lock" in makefile.split("$(STAMP):")[1].split("\n")[0]
