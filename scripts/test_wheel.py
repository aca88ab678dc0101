"""`make test-wheel`: what `pip install hadis` gives, away from this checkout.

Builds the sdist and the wheel (`python -m build` builds the wheel from the sdist, so both must carry
the data), checks that they hold every file of profiles/, installs the wheel alone into a fresh
virtualenv in a temporary folder (the base install: no extra, so no torch), and from a folder there
runs `hadis plan`, `hadis simulate` on a short trace, `hadis schema` and the client's imports; then
`hadis submit` against `hadis serve all`, started from this checkout's virtualenv in a namespace of
its own, stopped with SIGTERM, its namespace deleted; last, an editable install of this checkout in
the same virtualenv finds the checkout's profiles/ the same way. Last line `test-wheel ok ...`; exit 1
on any failure, the temporary folder kept and named.

With --extras (`make test-wheel-extras`), the README's other installs instead: the sdist alone into a
fresh virtualenv (`hadis plan` runs, no torch), and the wheel with `[models]` into another (a tiny
diffusers pipeline generates an image and the open_clip judge scores it). Last line `test-wheel-extras ok`.

    .venv/bin/python scripts/test_wheel.py [--keep] [--extras]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAN_ARGS = ["--profile", "paper-l40s-x10", "--gpus", "16", "--demand", "10", "--slo", "6"]
TRACE_JOBS = 30
STACK_READY_S = 180.0
SUBMIT_TIMEOUT_S = 120
STOP_S = 60.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What the wheel's commands may see of this environment: the broker and the store, not a profile
# folder, a namespace or this checkout's Python path.
PASSED_SETTINGS = ("HADIS_AMQP_URL", "HADIS_REDIS_URL")


class Failure(Exception):
    """One check failed; the message says which and shows the output."""


def clean_env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if (not name.startswith("HADIS_") or name in PASSED_SETTINGS)
           and name not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, **extra}


def run(command: list[str | Path], cwd: Path, timeout_s: float = 300.0, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run to the end; a non-zero exit is a Failure that shows the command's output."""
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env or clean_env(), text=True,
                            capture_output=True, timeout=timeout_s)
    if result.returncode != 0:
        raise Failure(f"{' '.join(map(str, command))} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def step(name: str, started: float) -> None:
    print(f"  {name}: {time.perf_counter() - started:.1f} s", flush=True)


def source_copy(tmp: Path) -> Path:
    """This checkout's files as git sees them (tracked, and new ones not ignored), links kept as links,
    in a folder of this run's own. setuptools writes `hadis.egg-info` and the sdist's staging folder
    `hadis-<version>/` into the folder it builds from, and removes the latter when done: CI runs
    `make test-wheel` and `make test-wheel-extras` side by side, and two builds in one checkout
    removed each other's staging folder (`No such file or directory: 'hadis-0.1.0/hadis/profiles/...'`)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    source = tmp / "source"
    for name in filter(None, listed):
        origin, copy = ROOT / name, source / name
        if not origin.is_symlink() and not origin.is_file():
            continue  # deleted in the working tree, or a submodule's folder
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, copy, follow_symlinks=False)
    return source


def build(tmp: Path) -> tuple[Path, Path]:
    """The sdist and the wheel, with `build` from a virtualenv of its own (nothing added to .venv), from a
    copy of the checkout (`source_copy`: nothing written into it either)."""
    tools = tmp / "tools"
    run([sys.executable, "-m", "venv", tools], tmp)
    run([tools / "bin" / "pip", "install", "--quiet", "build"], tmp)
    run([tools / "bin" / "python", "-m", "build", "--outdir", tmp / "dist", source_copy(tmp)], tmp)
    (sdist,), (wheel,) = (tmp / "dist").glob("*.tar.gz"), (tmp / "dist").glob("*.whl")
    return sdist, wheel


def data_files() -> dict[str, bytes]:
    """profiles/ as the packages must carry it: path under hadis/profiles -> content."""
    folder = ROOT / "profiles"
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def check_archives(sdist: Path, wheel: Path) -> None:
    expected = data_files()
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name: archive.read(name) for name in archive.namelist()}
        (listing,) = (name for name in in_wheel if name.endswith(".dist-info/top_level.txt"))
        top_level = set(in_wheel[listing].decode().split())
    with tarfile.open(sdist) as archive:
        prefix = sdist.name.removesuffix(".tar.gz")
        in_sdist = {member.name.removeprefix(f"{prefix}/") for member in archive.getmembers() if member.isfile()}
    for relative, content in expected.items():
        if in_wheel.get(f"hadis/profiles/{relative}") != content:
            raise Failure(f"the wheel lacks hadis/profiles/{relative}, or holds another version of it")
        if f"hadis/profiles/{relative}" not in in_sdist:
            raise Failure(f"the sdist lacks hadis/profiles/{relative}")
    if top_level != {"hadis", "shared", "services"}:
        raise Failure(f"the wheel's top-level packages are {sorted(top_level)}")
    page = {path.relative_to(ROOT).as_posix(): path.read_bytes() for path in (ROOT / "services/api/static").iterdir()}
    for relative, content in page.items():
        if in_wheel.get(relative) != content or relative not in in_sdist:
            raise Failure(f"the wheel or the sdist lacks {relative} (the dashboard's page), or holds another version")
    print(f"  the sdist and the wheel carry the {len(expected)} files of profiles/ and the {len(page)} of the "
          "dashboard's page", flush=True)


def install(tmp: Path, wheel: Path) -> Path:
    """A fresh virtualenv with the wheel and its base dependencies; its bin folder."""
    venv = tmp / "client"
    run([sys.executable, "-m", "venv", venv], tmp)
    run([venv / "bin" / "pip", "install", "--quiet", "--no-compile", wheel], tmp, timeout_s=600)  # see check_extras
    return venv / "bin"


def check_imports(bin_dir: Path, work: Path) -> None:
    """The documented imports work without torch, and the data is the installed copy."""
    code = ("import importlib.util, sys\n"
            "assert importlib.util.find_spec('torch') is None, 'torch is installed'\n"
            "from hadis import Client, Job, JobRecord, JobState, Settings, submit_and_wait\n"
            "from shared.client import Client as SharedClient\n"
            "from shared.schemas import Job as SharedJob\n"
            "assert Client is SharedClient and Job is SharedJob\n"
            "import shared.profiles\n"
            "print(shared.profiles.PROFILES_DIR)\n")
    where = Path(run([bin_dir / "python", "-c", code], work).stdout.strip())
    if bin_dir.parent not in where.parents:
        raise Failure(f"the installed hadis reads its profiles from {where}, not from its virtualenv")
    print(f"  from hadis import Client, ...: no torch; profiles at {where.relative_to(bin_dir.parent)}", flush=True)


def check_plan(bin_dir: Path, work: Path) -> None:
    plan = json.loads(run([bin_dir / "hadis", "plan", *PLAN_ARGS], work).stdout)
    if not plan.get("feasible"):
        raise Failure(f"hadis plan found no feasible plan: {plan}")
    print(f"  hadis plan: {plan['reason']}", flush=True)


def check_simulate(bin_dir: Path, work: Path) -> None:
    """A short trace in the traces/ format (arrival_ms,prompt_id), through the simulator."""
    trace = work / "short.txt"
    trace.write_text("".join(f"{200.0 * i},{(37 * i) % 5000}\n" for i in range(TRACE_JOBS)))
    out = work / "simulation"
    report = json.loads(run([bin_dir / "hadis", "simulate", "--trace", trace, "--policy", "hadis", "--gpus", "4",
                             "--profile", "paper-l40s-x10", "--slo", "6", "--out", out], work).stdout)
    if report["submitted"] != TRACE_JOBS or report["lost"] != 0 or not (out / "report.json").is_file():
        raise Failure(f"hadis simulate: {report}")
    print(f"  hadis simulate: {report['submitted']} jobs, lost {report['lost']}", flush=True)


def check_schema(bin_dir: Path, work: Path) -> None:
    printed = json.loads(run([bin_dir / "hadis", "schema"], work).stdout)
    if printed != json.loads((ROOT / "docs" / "job.schema.json").read_text()):
        raise Failure("the wheel's `hadis schema` differs from docs/job.schema.json")
    print("  hadis schema: docs/job.schema.json", flush=True)


# One image from a real diffusers pipeline class (tiny random weights) and its score from the real
# open_clip judge, in the [models] install: what a worker and the judge need, from the wheel alone.
MODELS_CHECK = """
import io
from shared.backends import make_generator, make_scorer
from shared.backends.base import GenerationInput, ScoreInput
from shared.profiles import load_profile
model = load_profile("tiny-cpu").model("tiny-sd-turbo")
(image,) = make_generator("tiny", model).generate([GenerationInput("w", "a red ball", "", 7, 512, 512)])
(score,) = make_scorer("clip", seed=0).score([ScoreInput("w", "a red ball", image, model)])
assert 0.0 <= score <= 1.0, score
import shared.profiles, torch
print(image.size[0], round(score, 3), torch.__version__, shared.profiles.PROFILES_DIR)
"""


def check_extras(tmp: Path, sdist: Path, wheel: Path, work: Path) -> None:
    """The README's other installs, each into a fresh virtualenv: the sdist alone (a base install:
    `hadis plan` runs, no torch), and the wheel with the `[models]` extra (a tiny pipeline generates
    and the CLIP judge scores, from the installed copy; torch comes from this machine's wheels)."""
    started = time.perf_counter()
    source = tmp / "from-sdist"
    run([sys.executable, "-m", "venv", source], tmp)
    run([source / "bin" / "pip", "install", "--quiet", "--no-compile", sdist], tmp, timeout_s=600)
    check_plan(source / "bin", work)
    run([source / "bin" / "python", "-c", "import importlib.util; assert importlib.util.find_spec('torch') is None"],
        work)
    step(f"pip install {sdist.name}: a base install, hadis plan runs", started)
    models = tmp / "models"
    run([sys.executable, "-m", "venv", models], tmp)
    # --no-compile (here and in the other installs): the checks import what they use, which Python
    # compiles then; ahead, pip compiled every file of every dependency (a third of this install's
    # time, torch's files), which is pip's work, not hadis's packaging.
    run([models / "bin" / "pip", "install", "--quiet", "--no-compile", f"{wheel}[models]"], tmp, timeout_s=900)
    size, score, torch_version, where = run([models / "bin" / "python", "-c", MODELS_CHECK], work,
                                            timeout_s=600).stdout.split()
    if models not in Path(where).parents:
        raise Failure(f"the [models] install reads its profiles from {where}, not from its virtualenv")
    step(f"pip install '{wheel.name}[models]': torch {torch_version}, a tiny-sd-turbo image ({size} px) "
         f"scored {score} by the CLIP judge", started)
    shutil.rmtree(models)  # about 6 GB: not kept past its check


def check_editable(bin_dir: Path, work: Path) -> None:
    """The same virtualenv with an editable install of this checkout instead: the data is the
    checkout's profiles/ (through hadis/profiles), found the same way, from a folder elsewhere."""
    run([bin_dir / "pip", "install", "--quiet", "--no-deps", "--editable", ROOT], work)
    where = Path(run([bin_dir / "python", "-c", "import shared.profiles; print(shared.profiles.PROFILES_DIR)"],
                     work).stdout.strip())
    if where != ROOT / "hadis" / "profiles":
        raise Failure(f"an editable install reads its profiles from {where}, not from {ROOT / 'hadis' / 'profiles'}")
    run([bin_dir / "hadis", "plan", *PLAN_ARGS], work)
    print(f"  editable install: profiles at {where.relative_to(ROOT)}, hadis plan runs", flush=True)


def start_stack(namespace: str, log: Path) -> subprocess.Popen[bytes]:
    """`hadis serve all` from this checkout's virtualenv (the one with the models), in a session of its own."""
    hadis = Path(sys.executable).parent / "hadis"
    with open(log, "wb") as output:
        # The stack's api on a port of its own (0: any free one): this test submits over AMQP.
        env = clean_env(HADIS_NAMESPACE=namespace, HADIS_API_PORT="0")
        return subprocess.Popen([str(hadis), "serve", "all"], cwd=ROOT, env=env,
                                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_workers(bin_dir: Path, work: Path, namespace: str, stack: subprocess.Popen[bytes], log: Path) -> None:
    """Until the wheel's `hadis status --cluster` shows a live worker."""
    give_up_at = time.monotonic() + STACK_READY_S
    while time.monotonic() < give_up_at:
        if stack.poll() is not None:
            raise Failure(f"hadis serve all exited {stack.returncode}:\n{tail(log)}")
        cluster = json.loads(run([bin_dir / "hadis", "status", "--cluster"], work,
                                 env=clean_env(HADIS_NAMESPACE=namespace)).stdout)
        if cluster["workers"]:
            return
        time.sleep(2.0)
    raise Failure(f"no worker registered within {STACK_READY_S:.0f} s:\n{tail(log)}")


def check_submit(bin_dir: Path, work: Path, namespace: str) -> None:
    image = work / "x.png"
    record = json.loads(run([bin_dir / "hadis", "submit", "a red bicycle", "--out", image,
                             "--timeout", str(SUBMIT_TIMEOUT_S)], work, timeout_s=SUBMIT_TIMEOUT_S + 60,
                            env=clean_env(HADIS_NAMESPACE=namespace)).stdout)
    if record.get("state") != "done" or not image.read_bytes().startswith(PNG_MAGIC):
        raise Failure(f"hadis submit: {record}")
    size = run([bin_dir / "python", "-c", "import sys; from PIL import Image; image = Image.open(sys.argv[1]); "
                "image.verify(); print(*image.size)", image], work).stdout.split()
    print(f"  hadis submit: {record['job_id']} done in {record['latency_s']:.1f} s, a {'x'.join(size)} PNG",
          flush=True)


def stop_stack(stack: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM to the supervisor: it stops its services; nothing of the session may outlive it."""
    if stack.poll() is None:
        stack.send_signal(signal.SIGTERM)
    try:
        code = stack.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(stack.pid, signal.SIGKILL)
        raise Failure(f"hadis serve all did not stop within {STOP_S:.0f} s of SIGTERM:\n{tail(log)}") from None
    time.sleep(0.5)
    try:
        os.killpg(stack.pid, signal.SIGKILL)  # its session: only processes this script started
    except ProcessLookupError:
        pass
    else:
        raise Failure(f"processes of hadis serve all outlived it (killed):\n{tail(log)}")
    if code != 0:
        raise Failure(f"hadis serve all exited {code} on SIGTERM:\n{tail(log)}")


def delete_namespace(namespace: str) -> None:
    from shared.client import Client
    from shared.settings import Settings

    async def delete() -> None:
        client = await Client.open(Settings(namespace=namespace))
        try:
            await client.delete_namespace()
        finally:
            await client.close()

    asyncio.run(delete())


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def against_stack(bin_dir: Path, work: Path, tmp: Path) -> None:
    namespace = f"wheel-{secrets.token_hex(4)}"
    log = tmp / "stack.log"
    started = time.perf_counter()
    stack = start_stack(namespace, log)
    try:
        wait_for_workers(bin_dir, work, namespace, stack, log)
        step(f"hadis serve all ready (namespace {namespace})", started)
        check_submit(bin_dir, work, namespace)
    finally:
        try:
            stop_stack(stack, log)
        finally:
            delete_namespace(namespace)
    step("stack stopped, namespace deleted", started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--extras", action="store_true",
                        help="only the other installs the README gives: the sdist, and the wheel with [models]")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hadis-wheel-"))
    work = tmp / "work"
    work.mkdir()
    started = time.perf_counter()
    try:
        sdist, wheel = build(tmp)
        step(f"built {sdist.name} and {wheel.name}", started)
        check_archives(sdist, wheel)
        if args.extras:
            check_extras(tmp, sdist, wheel, work)
            if not args.keep:
                shutil.rmtree(tmp)
            print(f"test-wheel-extras ok in {time.perf_counter() - started:.0f} s", flush=True)
            return 0
        bin_dir = install(tmp, wheel)
        step("installed the wheel alone into a fresh virtualenv", started)
        check_imports(bin_dir, work)
        check_plan(bin_dir, work)
        check_simulate(bin_dir, work)
        check_schema(bin_dir, work)
        against_stack(bin_dir, work, tmp)
        check_editable(bin_dir, work)
    except (Failure, subprocess.TimeoutExpired) as error:
        print(f"test-wheel FAILED: {error}\n(kept {tmp})", file=sys.stderr, flush=True)
        return 1
    if not args.keep:
        shutil.rmtree(tmp)
    print(f"test-wheel ok: built, installed without torch, plan, simulate, schema, submit, editable, "
          f"in {time.perf_counter() - started:.0f} s{f' (kept {tmp})' if args.keep else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
