"""The project's code from a checkout of one's choice, with this venv's packages: so that a run can
put an older revision beside the working tree (`make bench-api BENCH_API_ARGS="--baseline REV"`, the
fairness run's --code) on the same machine, broker and store.

Everything the code under test does goes through processes started here: its `shared` and `services`
come first on the path (PYTHONPATH, and the working directory, which `python -m` and `-c` put ahead
of it) and this venv's editable install of the working tree only serves what the checkout lacks. Keys
are made by the code's own `hadis api-key create` (its key format, its limits and their units), and
a namespace is deleted by the code that declared it (queue arguments differ between revisions: the
broker refuses a declaration that does not match the queue)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
# `hadis` as this venv's console script runs it (shared.cli:main).
HADIS = (sys.executable, "-c", "import sys; from shared.cli import main; sys.argv[0] = 'hadis'; sys.exit(main())")
DELETE_NAMESPACE = """
import asyncio
from shared.client import Client

async def delete():
    client = await Client.open()
    await client.delete_namespace()
    await client.close()

asyncio.run(delete())
"""
UNITS_PROBE = ("import sys; from shared.policies import tenancy; "
               "print(getattr(tenancy, 'job_units', lambda w, h: 1)(int(sys.argv[1]), int(sys.argv[2])))")


@dataclass(frozen=True)
class Code:
    """A checkout's code with an environment (HADIS_* settings included) for its processes."""

    env: dict[str, str]
    cwd: str

    @classmethod
    def at(cls, folder: Path | str | None, env: dict[str, str]) -> Code:
        """The code of `folder` (None: this checkout) with `env` over this process's environment."""
        where = Path(folder).resolve() if folder else ROOT
        merged = {**os.environ, **env}
        if where != ROOT:
            merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(where), merged.get("PYTHONPATH")]))
        return cls(merged, str(where))

    def with_env(self, **env: str) -> Code:
        return Code({**self.env, **env}, self.cwd)

    def python(self, program: str, *argv: str) -> str:
        """`python -c PROGRAM ARGV...` with this code; its standard output."""
        return subprocess.run([sys.executable, "-c", program, *argv], env=self.env, cwd=self.cwd,
                              capture_output=True, text=True, check=True).stdout

    def hadis(self, *argv: str) -> str:
        """`hadis ARGV...` with this code; its standard output."""
        return subprocess.run([*HADIS, *argv], env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              check=True).stdout

    def popen(self, argv: list[str], log_path: Path, **options) -> subprocess.Popen:
        """A process of this code (HADIS for `hadis`), its output appended to log_path."""
        with open(log_path, "ab") as log:
            return subprocess.Popen(argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **options)

    def units(self, size: tuple[int, int]) -> float:
        """What one image of this size costs a tenant: units where the code has them, else one."""
        return float(self.python(UNITS_PROBE, str(size[0]), str(size[1])))

    def key_options(self) -> frozenset[str]:
        """The options of its `hadis api-key create` (--weight and --image-mb came with issue 29)."""
        return frozenset(re.findall(r"--[a-z][a-z-]*", self.hadis("api-key", "create", "--help")))

    def make_key(self, tenant: str, limits: dict[str, float]) -> str:
        """`hadis api-key create` with those of the limits it has options for; the key."""
        options, argv = self.key_options(), ["api-key", "create", "--tenant", tenant]
        for name, value in limits.items():
            option = "--" + name.replace("_", "-")
            if option in options:
                argv += [option, str(int(value)) if name in ("burst", "max_active") else f"{value:g}"]
        return orjson.loads(self.hadis(*argv))["key"]

    def delete_namespace(self) -> None:
        """Its HADIS_NAMESPACE's queues and keys, by this code. A failure is told, not raised: it runs at
        the end of a run (in a `finally`), whose figures or error it must not hide."""
        done = subprocess.run([sys.executable, "-c", DELETE_NAMESPACE], env=self.env, cwd=self.cwd,
                              capture_output=True, text=True)
        if done.returncode:
            print(f"namespace {self.env.get('HADIS_NAMESPACE')} left behind: {done.stderr.strip()[-400:]}")


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """`git worktree add` of `revision` in a temporary folder, removed (with its git record) at the end."""
    with tempfile.TemporaryDirectory(prefix="hadis-rev-") as parent:
        folder = Path(parent) / "checkout"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(folder), revision], cwd=ROOT, check=True)
        try:
            yield folder
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, check=False)
            subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)


def git_log(revision: str, format: str) -> str:
    """`git log -1 --format=FORMAT REVISION` (%h: the short hash, %s: the subject), for the report."""
    return subprocess.run(["git", "log", "-1", f"--format={format}", revision], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
