"""The lock: exact pins of the whole environment, agreeing with the requirements and with what is installed;
the package's own metadata keeps ranges."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO_ROOT

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][A-Za-z0-9.]*)$")


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"requirements.lock: not an exact pin without local label: {line!r}"
        pins[canonicalize_name(match["name"])] = Version(match["version"])
    return pins


def _requirements(path: Path) -> list[Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def test_every_requirement_is_locked_at_a_version_it_allows():
    pins = _lock()
    for file in ("requirements.txt", "requirements-dev.txt"):
        for requirement in _requirements(REPO_ROOT / file):
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{file}: {requirement} is not in requirements.lock; run tools/lock.sh"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{file}: {requirement} disagrees with requirements.lock ({name}=={pins[name]}); "
                "run tools/lock.sh"
            )


def test_the_lock_is_closed_under_dependencies():
    pins = _lock()
    for name in pins:
        for line in metadata.requires(name) or []:
            dependency = Requirement(line)
            if dependency.marker is not None and not dependency.marker.evaluate({"extra": ""}):
                continue
            assert canonicalize_name(dependency.name) in pins, f"{name} needs {dependency}, not locked"


def test_the_environment_is_the_lock():
    for name, version in _lock().items():
        installed = Version(metadata.version(name))
        assert Version(installed.public) == version, f"{name}: installed {installed}, locked {version}"


def test_the_package_metadata_has_ranges_not_pins():
    requirements = [Requirement(line) for line in metadata.requires("flmm")]
    assert requirements, "flmm declares no dependencies"
    pinned = [str(r) for r in requirements if any(s.operator in ("==", "===") for s in r.specifier)]
    assert not pinned, f"exact pins belong in requirements.lock only: {pinned}"
    torch = next(r for r in requirements if canonicalize_name(r.name) == "torch")
    assert torch.specifier.contains("2.13.0") and torch.specifier.contains("2.20.0")
