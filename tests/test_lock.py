"""The test environment's lock (requirements-dev.lock) agrees with pyproject.toml: every
dependency the package declares, in any extra, is pinned there at a version its range allows, and
the lock pins nothing as the package's own that the package no longer declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-dev.lock"
OURS = "distill-gateway (pyproject.toml)"


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    parsed = (Requirement(text) for text in requirements)
    return {canonicalize_name(requirement.name): requirement for requirement in parsed}


def locked(text: str) -> tuple[dict[str, Version], set[str]]:
    """Every pin, and the names uv says the package itself asked for (``# via`` our project)."""
    pins: dict[str, Version] = {}
    ours: set[str] = set()
    current = ""
    for line in text.splitlines():
        pin = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line.strip())
        if pin is not None:
            current = canonicalize_name(pin.group(1))
            pins[current] = Version(pin.group(3))
        elif OURS in line and current:
            ours.add(current)
    return pins, ours


def disagreements(text: str) -> list[str]:
    pins, ours = locked(text)
    wanted = declared()
    problems = [
        f"{name} is declared in pyproject.toml but not pinned in the lock"
        for name in sorted(wanted.keys() - pins.keys())
    ]
    problems += [
        f"{name}=={pins[name]} is outside pyproject.toml's range {wanted[name].specifier}"
        for name in sorted(wanted.keys() & pins.keys())
        if not wanted[name].specifier.contains(pins[name], prereleases=True)
    ]
    problems += [
        f"{name} is pinned as the package's own dependency but pyproject.toml no longer asks for it"
        for name in sorted(ours - wanted.keys())
    ]
    return problems


def test_the_lock_pins_every_declared_dependency_within_its_range() -> None:
    assert disagreements(LOCK.read_text()) == [], "run `make locks` to refresh the lock"


def test_a_dependency_added_to_one_side_only_is_caught() -> None:
    text = LOCK.read_text()
    without_httpx = re.sub(r"(?m)^httpx==.*\n(?:    #.*\n)*", "", text)  # the pin, its "via"s
    assert disagreements(without_httpx) == [
        "httpx is declared in pyproject.toml but not pinned in the lock"
    ]
    stale = text + "leftpad==1.0\n    # via distill-gateway (pyproject.toml)\n"
    assert disagreements(stale) == [
        "leftpad is pinned as the package's own dependency but pyproject.toml no longer asks for it"
    ]
    too_old = re.sub(r"(?m)^fastapi==.*$", "fastapi==0.100.0", text)
    assert disagreements(too_old) == ["fastapi==0.100.0 is outside pyproject.toml's range >=0.115"]


def test_the_makefile_installs_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "DEV_LOCK := requirements-dev.lock" in makefile
    assert re.search(r"(?m)^PIP := .* -c \$\(DEV_LOCK\)$", makefile)
