"""The rows of README.md's Commands table that no other test runs as written: `make drill`, `make chaos`,
`make soak`, `make bench-api`, `make bench-pipeline`, `make bench-planner`, `make bench-simulator`,
`make simulations`, `make experiments`, `make device-wheels`, `hadis plan ...` and `hadis set-plan ...`.
Each command is read from the table (the code spans of a row's first cell), so that a changed README
is the text that runs, and each is held to the outcome that makes it worth running (every job done,
none lost or duplicated; the result lines with positive figures; the reports written), never to a time.

What is changed from the text, and nothing else:
- `make T` is run as `make -o .venv/.installed T` (the install stamp taken as up to date: a test must
  not reinstall the virtualenv), with the target's documented knob (DRILL_ARGS, CHAOS_ARGS, SOAK_ARGS,
  BENCH_ARGS, BENCH_API_ARGS, BENCH_PLANNER_ARGS, BENCH_SIMULATOR_ARGS, SIMULATIONS_ARGS, EXPERIMENTS_ARGS
  with EXPERIMENT_TRACES and EXPERIMENT_POLICIES: the Makefile's comments) set to a short run, and the
  reports sent to a temporary folder (BENCH_SIMULATOR_OUT, SIMULATIONS_OUT, EXPERIMENTS_OUT), not the
  checkout's out/;
- chaos, soak and drill restart RabbitMQ: here a node of the module's own (tests/faults/servers.py),
  through HADIS_AMQP_URL and RABBITMQCTL (scripts/chaos.py: rabbitmqctl), since the machine's broker
  serves the CI lanes that run beside this one;
- `hadis` is the virtualenv's, in a namespace of the test's own; `hadis plan`'s placeholders
  P, N, QPS and S are a profile, a GPU count, a demand and an SLO; `...` of `hadis set-plan` is left out,
  then stands for another of its options.

`make device-wheels` downloads through pip's configured indexes: on this machine kind, local ones.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.deploy.test_make_loadtest import delete_namespace
from tests.faults.servers import RABBITMQ_SERVER, RabbitNode
from tests.helpers import free_port, make_settings

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
ANY_NUMBER = r"-?\d+(?:\.\d+)?"

# The short runs, through each target's knob.
DRILL_JOBS, CHAOS_JOBS = 24, 20
# An SLO of 10 minutes: what the drill asserts is every job done, none lost or duplicated, not how fast (on
# two busy cores, a worker's restart after a kill of the agent can hold jobs past the default 60 s).
DRILL_ARGS = f"--jobs {DRILL_JOBS} --rate 4 --kill-every 3 --broker-down 2 --seed 7 --slo 600 --timeout 300"
CHAOS_ARGS = f"--jobs {CHAOS_JOBS} --rate 5 --kills 2 --broker-down 2 --redis-down 1 --seed 7 --timeout 180"
SOAK_ARGS = "--minutes 0.25 --rate 4 --restart-every 8 --broker-down 2 --timeout 180"
BENCH_ARGS = "--jobs 300 --raw-messages 1000 --seconds 2"
BENCH_API_ARGS = "--concurrency 8 --seconds 1 --warmup-seconds 0.5 --paced-seconds 1 --pipeline-jobs 200"
BENCH_PLANNER_ARGS = "--calls 20"
BENCH_SIMULATOR_ARGS = "--head 10"
SIMULATIONS_POLICIES = ("hadis", "diffserve")
SIMULATIONS_ARGS = f"--policies {','.join(SIMULATIONS_POLICIES)} --head 20"


# README.md's Commands table.
def commands_table() -> dict[str, str]:
    """Each command of the table (a code span of a row's first cell) -> its row's description."""
    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            first, description = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip("| "))][:2]
            for code in re.findall(r"`([^`]+)`", first):
                rows[code.replace("\\|", "|")] = description
    return rows


def described(command: str) -> str:
    table = commands_table()
    assert command in table, f"README's Commands table has no `{command}`: {sorted(table)}"
    return table[command]


def table_command(starting: str) -> str:
    """The one command of the table that starts with `starting`."""
    matches = [command for command in commands_table() if command.startswith(starting)]
    assert len(matches) == 1, f"README's Commands table: expected one `{starting}...`, found {matches}"
    return matches[0]


def documented_last_line(command: str) -> re.Pattern:
    """The last line the table gives for a command (`last line \\`...\\``), as a pattern: a bare `=`
    takes a count, `N` is a count, `...` is the rest."""
    found = re.search(r"last line `([^`]+)`", described(command))
    assert found, f"README gives no last line for `{command}`"
    words = []
    for word in found.group(1).split():
        words.append(r".*" if word == "..." else r"\d+" if word == "N" else
                     re.escape(word) + r"\d+" if word.endswith("=") else re.escape(word))
    return re.compile(" ".join(words))


def counts(line: str) -> dict[str, int]:
    """`name=<n>` of a result line, and `of <n>` as `of`."""
    found = {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", line)}
    of = re.search(r"\bof (\d+)", line)
    return {**found, "of": int(of.group(1))} if of else found


# Running them.
def clean_env(**extra: str) -> dict[str, str]:
    """This environment (the broker and the store), none of the test's other HADIS_ settings."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("HADIS_") or name in ("HADIS_AMQP_URL", "HADIS_REDIS_URL")}
    env.pop("RABBITMQCTL", None)
    return {**env, **extra}


def make(command: str, env: dict[str, str], timeout_s: float, **variables: str) -> list[str]:
    """`make TARGET VAR=...` from the checkout's root as the table gives it; its output's lines."""
    found = re.fullmatch(r"make ([\w-]+)", command)
    assert found, command
    argv = ["make", "--no-print-directory", "-o", ".venv/.installed", found.group(1),
            *(f"{name}={value}" for name, value in variables.items())]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(argv)} exited {result.returncode}:\n{output[-6000:]}"
    return result.stdout.strip().splitlines()


def hadis(line: str, env: dict[str, str]) -> dict:
    """A `hadis ...` line in a shell whose PATH starts with the virtualenv's bin; its JSON output."""
    result = subprocess.run(["bash", "-c", "set -eo pipefail\n" + line], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "PATH": f"{BIN}:{env.get('PATH', '')}"}, timeout=120)
    output = f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert result.returncode == 0, f"{line}\nexited {result.returncode}:\n{output}"
    return orjson.loads(result.stdout)


def value(lines: list[str], name: str) -> float:
    """The figure of a `name <number>` result line."""
    found = [line for line in lines if re.fullmatch(rf"{name} {ANY_NUMBER}", line)]
    assert len(found) == 1, f"expected one line `{name} <number>`:\n" + "\n".join(lines[-30:])
    return float(found[0].split()[1])


def test_the_readme_has_the_commands_this_module_runs():
    for target in ("drill", "chaos", "soak", "bench-api", "bench-pipeline", "bench-planner", "bench-simulator",
                   "simulations", "experiments"):
        described(f"make {target}")
    assert documented_last_line("make drill").pattern.startswith("drill")
    assert documented_last_line("make chaos").fullmatch("lost=0 duplicated=0 failed=0 of 20")
    assert re.fullmatch(r"hadis plan --profile P --gpus N --demand QPS --slo S", table_command("hadis plan "))
    assert table_command("hadis set-plan ").endswith(" ...")


def test_make_device_wheels():
    """Every pin of scripts/device/carry.txt comes as a wheel for the device's Python 3.12 on x86-64."""
    make(table_command("make device-wheels"), clean_env(), 300)
    pins = [line.split("==") for line in (ROOT / "scripts/device/carry.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    wheels = {path.name.lower() for path in (ROOT / ".whl").glob("*.whl")}
    for name, version in pins:
        prefix = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
        found = [wheel for wheel in wheels if wheel.startswith(prefix)]
        assert found, f"no wheel of {name}=={version} in .whl/: {sorted(wheels)}"
        assert all(w.endswith("-none-any.whl") or "cp312" in w or "abi3" in w for w in found), found


# The hadis commands.
def test_hadis_plan_as_the_readme_gives_it():
    line = table_command("hadis plan ")
    for option, given in (("--profile P", "--profile paper-l40s-x10"), ("--gpus N", "--gpus 16"),
                          ("--demand QPS", "--demand 20"), ("--slo S", "--slo 6")):
        assert option in line, line
        line = line.replace(option, given)
    plan = hadis(line, clean_env())
    assert plan["feasible"] is True and plan["solve_ms"] > 0, plan  # "with its solve time"
    assert 0 < plan["light_gpus"] + plan["heavy_gpus"] <= 16, plan
    assert plan["capacity_qps"] >= 20, plan
    assert plan["light_model"] and plan["heavy_model"] and 0 <= plan["r"] <= 1 and 0 <= plan["d"] <= 1, plan


def test_hadis_set_plan_as_the_readme_gives_it():
    line = table_command("hadis set-plan ").removesuffix(" ...")
    namespace = make_settings().namespace
    env = clean_env(HADIS_NAMESPACE=namespace)
    try:
        plan = hadis(line, env)
        assert (plan["r"], plan["d"], plan["version"], plan["reason"]) == (0.3, 0.2, 1, "hadis set-plan"), plan
        assert hadis("hadis status --cluster", env)["plan"] == plan  # published: what every service reads
        again = hadis(line.replace(" --d 0.2", " --d 0.2 --light-batch 4"), env)  # "...": another of its options
        assert (again["version"], again["r"], again["d"], again["light_batch"]) == (2, 0.3, 0.2, 4), again
    finally:
        asyncio.run(delete_namespace(namespace))


# The simulator and the planner.
def test_make_bench_planner():
    lines = make(table_command("make bench-planner"), clean_env(), 180, BENCH_PLANNER_ARGS=BENCH_PLANNER_ARGS)
    row = re.compile(r"\s*(\d+)\s+(\d+)\s+(\d+\.\d{3})\s+(\d+\.\d{3})\s+(\d+\.\d{3})  \S+ -> \S+ r=\S+ d=\S+ "
                     r"b=\d+/\d+ gpus=(\d+)\+(\d+) FID \d+(?:\.\d+)?( \(overload\))?")
    rows: dict[int, list[tuple]] = {16: [], 1024: []}
    for line in lines:
        if found := row.fullmatch(line):
            gpus, _, p50, p99, worst, light, heavy, overload = found.groups()
            assert 0 <= float(p50) <= float(p99) <= float(worst) and float(worst) > 0, line
            assert int(light) + int(heavy) <= int(gpus), line
            rows[int(gpus)].append((float(p99), bool(overload)))
    for gpus, target in ((16, 10), (1024, 100)):
        assert len(rows[gpus]) == 7, "\n".join(lines)  # seven demands each
        assert rows[gpus][-1][1] and not rows[gpus][0][1], rows[gpus]  # the last of each is an overload
        worst = re.fullmatch(rf"worst p99 at {gpus} GPUs: (\d+\.\d{{3}}) ms \(target <= {target} ms\)",
                             lines[-2 if gpus == 16 else -1])
        assert worst and float(worst.group(1)) == max(p99 for p99, _ in rows[gpus]), lines[-2:]


def test_make_bench_simulator(tmp_path):
    out = tmp_path / "bench-simulator"
    lines = make(table_command("make bench-simulator"), clean_env(), 180, BENCH_SIMULATOR_OUT=str(out),
                 BENCH_SIMULATOR_ARGS=BENCH_SIMULATOR_ARGS)
    grepped = [line.strip().rstrip(",") for line in lines if re.match(r'\s+"\w+": ', line)]  # not make's echo
    figures = orjson.loads("{" + ",".join(grepped) + "}")
    assert set(figures) == {"submitted", "lost", "slo_violation_ratio", "mean_fid", "wall_s"}, lines
    assert figures["submitted"] > 0 and figures["lost"] == 0, figures
    assert 0 <= figures["slo_violation_ratio"] <= 1 and figures["mean_fid"] > 0 and figures["wall_s"] > 0, figures
    report = orjson.loads((out / "report.json").read_bytes())
    assert (report["gpus"], report["notes"]["scale"], report["submitted"]) == (1024, 64, figures["submitted"])
    assert report["completed"] + report["dropped"] == report["submitted"], report


def test_make_simulations(tmp_path):
    out = tmp_path / "simulations"
    make(table_command("make simulations"), clean_env(), 240, SIMULATIONS_OUT=str(out),
         SIMULATIONS_ARGS=SIMULATIONS_ARGS)
    runs = {"trace_1to40qps": (6, "paper-l40s-x10"), "trace_1_6qps": (60, "paper-l40s"),
            "heldout_1to20qps": (6, "paper-l40s-x10"), "heldout_1to58qps": (6, "paper-l40s-x10")}
    assert sorted(path.name for path in out.iterdir()) == sorted(runs)  # both comparison traces, both held out
    for folder, (slo_s, profile) in runs.items():
        table = (out / folder / "comparison.md").read_text()
        for policy in SIMULATIONS_POLICIES:
            report = orjson.loads((out / folder / policy / "report.json").read_bytes())
            assert report["trace"].startswith(folder.replace("heldout", "trace")), report["trace"]
            assert (report["policy"], report["mode"], report["slo_s"], report["profile"]) == \
                (policy, "simulate", slo_s, profile)
            assert report["submitted"] > 0 and report["lost"] == 0 and report["failed"] == 0, report
            assert re.search(rf"^\| {policy} \|.* \| {report['submitted']} \| 0 \|$", table, re.M), table


def test_make_experiments(tmp_path):
    """`make experiments` on one trace's first 15 s and one policy (its knobs: EXPERIMENT_TRACES,
    EXPERIMENT_POLICIES, EXPERIMENTS_ARGS, EXPERIMENTS_OUT): through the real services and in the
    simulator with its band, then the comparison of the two."""
    out = tmp_path / "experiments"
    make(table_command("make experiments"), clean_env(), 300, EXPERIMENTS_OUT=str(out), EXPERIMENT_TRACES="1to40",
         EXPERIMENT_POLICIES="hadis", EXPERIMENTS_ARGS="--head 15")
    for mode in ("experiment", "simulate"):
        report = orjson.loads((out / f"trace_1to40qps-{mode}" / "hadis" / "report.json").read_bytes())
        assert (report["policy"], report["mode"], report["slo_s"], report["profile"]) == \
            ("hadis", mode, 6, "paper-l40s-x10")
        assert report["submitted"] > 0 and report["lost"] == 0 and report["failed"] == 0, report
    band = orjson.loads((out / "trace_1to40qps-simulate" / "hadis" / "band.json").read_bytes())
    assert band, "the simulator's band"
    assert "hadis" in (out / "trace_1to40qps-experiment" / "differences.md").read_text()


# The benchmarks through the services (the machine's broker and store).
def test_make_bench_pipeline():
    lines = make(table_command("make bench-pipeline"), clean_env(), 300, BENCH_ARGS=BENCH_ARGS)
    raw = [line for line in lines if line.startswith("raw broker: ")]
    assert len(raw) == 1 and float(raw[0].split()[2]) > 0, "\n".join(lines)
    # asyncio, uvloop, then two routers and two judges: each drains the backlog and the paced jobs, none lost.
    saturated = [line for line in lines if re.fullmatch(r"saturation: 300 jobs, \d+ jobs/s, lost 0", line)]
    paced = [line for line in lines if re.fullmatch(r"paced 100 jobs/s for 2 s: added latency p50 \d+\.\d ms, "
                                                    r"p99 \d+\.\d ms, lost 0", line)]
    assert len(saturated) == len(paced) == 3, "\n".join(lines)
    assert lines[-2].startswith("broker_use ") and lines[-1].startswith("pipeline_jobs_per_s "), lines[-2:]
    assert value(lines, "broker_use") > 0 and value(lines, "pipeline_jobs_per_s") > 0


def test_make_bench_api():
    lines = make(table_command("make bench-api"), clean_env(), 300, BENCH_API_ARGS=BENCH_API_ARGS)
    for door in ("amqp", "api"):
        accepted = [line for line in lines if re.fullmatch(rf"{door}: \d+ accepted in .* jobs/s \(8 in flight\), "
                                                           r"0 refused", line)]
        paced = [line for line in lines if re.fullmatch(rf"{door}: paced 100 jobs/s for 1 s: p50 \d+\.\d\d ms, "
                                                        r"p99 \d+\.\d\d ms, 0 refused", line)]
        assert len(accepted) == len(paced) == 1, f"{door}:\n" + "\n".join(lines)
    assert any(re.fullmatch(r"pipeline: 200 jobs drained by every service at \d+ jobs/s, lost 0 .*", line)
               for line in lines), "\n".join(lines)
    names = ["api_accept_jobs_per_s", "amqp_accept_jobs_per_s", "api_ratio", "pipeline_jobs_per_s",
             "http_hop_p50_ms", "http_hop_p99_ms"]
    assert [line.split()[0] for line in lines[-6:]] == names, lines[-6:]
    for name in names[:4]:
        assert value(lines, name) > 0, name
    for name in names[4:]:  # a difference of two percentiles: a number of either sign
        value(lines, name)


# The fault runs, on a broker of the module's own.
@pytest.fixture(scope="module")
def own_broker(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A RabbitMQ node of the module's own; the environment that points chaos, soak and drill at it."""
    if not RabbitNode.available():
        pytest.skip("needs Debian's rabbitmq-server (a node of this module's own to restart)")
    node = RabbitNode(tmp_path_factory.mktemp("rabbit"), free_port(), free_port())
    node.start()
    try:
        node.ctl("await_startup")
        ctl = shlex.join(["env", f"HOME={node.directory / 'home'}",
                          RABBITMQ_SERVER.replace("rabbitmq-server", "rabbitmqctl"), "-n", node.name])
        yield clean_env(HADIS_AMQP_URL=node.url, RABBITMQCTL=ctl)
    finally:
        node.kill()


def test_make_drill(own_broker, tmp_path):
    command = table_command("make drill")
    lines = make(command, own_broker, 560, DRILL_ARGS=f"{DRILL_ARGS} --log {tmp_path / 'drill.log'}")
    assert documented_last_line(command).fullmatch(lines[-1]), lines[-1]
    figures = counts(lines[-1])
    assert figures["done"] == figures["of"] == DRILL_JOBS, "\n".join(lines[-40:])
    assert figures["lost"] == figures["duplicated"] == figures["failed"] == figures["expired"] == 0, lines[-1]
    assert figures["kills"] >= 1 and any("RabbitMQ started again" in line for line in lines), "\n".join(lines)


def test_make_chaos(own_broker, tmp_path):
    command = table_command("make chaos")
    lines = make(command, own_broker, 300, CHAOS_ARGS=f"{CHAOS_ARGS} --log {tmp_path / 'services.log'}")
    assert documented_last_line(command).fullmatch(lines[-1]), lines[-1]
    figures, before = counts(lines[-1]), counts(lines[-2])
    assert figures["lost"] == figures["duplicated"] == figures["failed"] == 0, "\n".join(lines[-40:])
    assert figures["of"] == CHAOS_JOBS and before["refused"] == 0 and before["kills"] == 2, lines[-2:]
    assert any("RabbitMQ started again" in line for line in lines), "\n".join(lines)
    assert any("redis-server restarted" in line for line in lines), "\n".join(lines)


def test_make_soak(own_broker, tmp_path):
    lines = make(table_command("make soak"), own_broker, 300, SOAK_ARGS=f"{SOAK_ARGS} --log {tmp_path / 'soak.log'}")
    # The Makefile's last line, as chaos's: lost=<n> duplicated=<n> failed=<n> of <submitted>.
    assert documented_last_line("make chaos").fullmatch(lines[-1]), lines[-1]
    figures, before = counts(lines[-1]), counts(lines[-2])
    assert figures["lost"] == figures["duplicated"] == figures["failed"] == 0, "\n".join(lines[-40:])
    # "every job must end done": all that were submitted (15 s at 4/s, none refused)
    assert before["done"] == figures["of"] == 60 and before["refused"] == 0, lines[-2:]
    assert before["restarts"] == 1, lines[-2]
