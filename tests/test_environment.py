"""The three places versions are named agree: constraints.txt (the pin set), environment.yml (conda users),
pyproject.toml (what the project needs); and the installed virtualenv is the pinned one."""
from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CORE = ["dask", "distributed", "pyarrow", "s3fs", "aiobotocore", "boto3", "pyiceberg"]
IN_ENVIRONMENT = CORE + ["botocore", "fsspec", "rapidgzip", "isal", "mmh3", "bokeh", "pyyaml"]
# conda-forge names that differ from the PyPI names used in constraints.txt
CONDA_TO_PYPI = {"python-isal": "isal", "pytables": "tables"}
NOT_PINNED = {"python", "pip"}  # provided by conda, not part of the pip pin set


def parse_constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        assert len(spec) == 1 and spec[0].operator == "==" and "*" not in spec[0].version, \
            f"constraints.txt:{n}: not an exact pin: {raw!r}"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt:{n}: {req.name} pinned twice"
        pins[name] = spec[0].version
    return pins


def load_environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _conda_spec(spec: str) -> tuple[str, str | None]:
    """'name', 'name=1.2', 'name==1.2', 'name 1.2', 'channel::name=1.2' -> (PyPI name, version or None)."""
    spec = spec.split("::", 1)[-1].strip()
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(?:(==?|\s)\s*([^\s=<>!~*,|]+))?\s*", spec)
    assert m, f"environment.yml: cannot read conda spec {spec!r} (use name=version)"
    name = canonicalize_name(m.group(1))
    return canonicalize_name(CONDA_TO_PYPI.get(name, name)), m.group(3)


def environment_packages() -> tuple[dict[str, str | None], dict[str, str | None], list[str]]:
    """(conda packages, pip packages, pip option lines) of environment.yml, as name -> exact version."""
    conda: dict[str, str | None] = {}
    pip: dict[str, str | None] = {}
    options: list[str] = []
    for dep in load_environment()["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, dep
            for line in dep["pip"]:
                line = line.strip()
                if line.startswith("-"):
                    options.append(line)
                    continue
                req = Requirement(line)
                spec = list(req.specifier)
                version = spec[0].version if len(spec) == 1 and spec[0].operator == "==" else None
                pip[canonicalize_name(req.name)] = version
        else:
            name, version = _conda_spec(str(dep))
            conda[name] = version
    return conda, pip, options


# ----------------------------------------------------------------------------------------- constraints
def test_constraints_are_exact_pins():
    pins = parse_constraints()
    assert len(pins) > 20
    for name in CORE:
        assert name in pins, f"core package {name} missing from constraints.txt"


# ------------------------------------------------------------------------------------- environment.yml
def test_environment_file_shape():
    env = load_environment()
    assert env["name"] == "impressions"
    assert "conda-forge" in env["channels"]
    conda, pip, options = environment_packages()
    assert conda.get("python") is not None and Version(conda["python"]).release[:2] == (3, 11)
    assert "pip" in conda
    assert pip, "environment.yml needs a pip section"
    assert any(re.fullmatch(r"-e\s+\.(\[[\w,-]+\])?", o) for o in options), "the project itself (-e .)"


def test_environment_versions_equal_constraints():
    pins = parse_constraints()
    conda, pip, _ = environment_packages()
    problems = []
    for where, packages in (("conda", conda), ("pip", pip)):
        for name, version in packages.items():
            if name in NOT_PINNED:
                continue
            if name not in pins:
                problems.append(f"{name} ({where}) is not pinned in constraints.txt")
            elif version is None:
                problems.append(f"{name} ({where}) has no exact version; constraints.txt pins {pins[name]}")
            elif Version(version) != Version(pins[name]):
                problems.append(f"{name} ({where}) {version} != constraints.txt {pins[name]}")
    both = set(conda) & set(pip)
    if both:
        problems.append(f"listed by both conda and pip: {sorted(both)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", IN_ENVIRONMENT)
def test_package_is_in_both_files(name):
    pins = parse_constraints()
    conda, pip, _ = environment_packages()
    assert name in pins, f"{name} missing from constraints.txt"
    assert name in conda or name in pip, f"{name} missing from environment.yml"


def test_version_comparison_really_compares():
    """The parser reads what the checks rely on (a self-test against silently reading nothing)."""
    conda, pip, _ = environment_packages()
    assert pip["dask"] == parse_constraints()["dask"]
    assert _conda_spec("python-isal=1.9.1") == ("isal", "1.9.1")
    assert _conda_spec("conda-forge::dask==2026.8.0") == ("dask", "2026.8.0")
    assert _conda_spec("pip") == ("pip", None)


# -------------------------------------------------------------------------------------- pyproject.toml
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _extra_requirements(dist: str, extras: set[str]) -> list[Requirement]:
    """Requirements that `dist[extras]` adds, read from the installed distribution's metadata."""
    out = []
    for line in md.requires(dist) or []:
        req = Requirement(line)
        if req.marker and any(req.marker.evaluate({**default_environment(), "extra": e}) for e in extras) \
                and not req.marker.evaluate({**default_environment(), "extra": ""}):
            out.append(req)
    return out


def test_runtime_dependencies_pinned():
    pins = parse_constraints()
    problems = []
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{line}: {req.name} not pinned in constraints.txt")
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{line}: constraints.txt pins {pins[name]}, outside {req.specifier}")
        # what the extras pull in must be pinned too (dask[distributed] -> distributed, pyiceberg[sql-sqlite]...)
        for extra_req in _extra_requirements(req.name, set(req.extras)):
            extra_name = canonicalize_name(extra_req.name)
            if extra_name not in pins:
                problems.append(f"{line}: extra requirement {extra_req} not pinned in constraints.txt")
            elif not extra_req.specifier.contains(pins[extra_name], prereleases=True):
                problems.append(f"{line}: {extra_req} but constraints.txt pins {pins[extra_name]}")
    assert not problems, "\n".join(problems)


def test_test_dependencies_pinned():
    pins = parse_constraints()
    for line in _pyproject()["project"]["optional-dependencies"]["test"]:
        assert canonicalize_name(Requirement(line).name) in pins, line


def test_pin_set_is_closed_and_consistent():
    """Every requirement of every pinned package needed at runtime (and by the tests) is itself pinned, at a
    version its dependants accept -- so `pip install -c constraints.txt` never has to pick a version."""
    pins = parse_constraints()
    todo = [Requirement(line) for line in _pyproject()["project"]["dependencies"]]
    todo += [Requirement(line) for line in _pyproject()["project"]["optional-dependencies"]["test"]]
    seen: set[tuple[str, frozenset]] = set()
    problems = []
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        if name not in pins:
            problems.append(f"{req} is required but not pinned")
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} is required but constraints.txt pins {pins[name]}")
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            problems.append(f"{req.name} is pinned but not installed in this environment")
            continue
        for line in requires:
            sub = Requirement(line)
            env = default_environment()
            if sub.marker and not any(sub.marker.evaluate({**env, "extra": e}) for e in ({""} | set(req.extras))):
                continue
            todo.append(sub)
    assert not problems, "\n".join(sorted(set(problems)))


# ------------------------------------------------------------------------------------- installed venv
@pytest.mark.parametrize("name", IN_ENVIRONMENT + ["pyiceberg-core", "numpy"])
def test_installed_version_is_the_pinned_one(name):
    assert md.version(name) == parse_constraints()[canonicalize_name(name)]
