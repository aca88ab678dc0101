"""No pickle, eval or shell anywhere in the code: an AST scan of every module we ship."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("shared", "services", "scripts", "loadtest", "docker")
                 for p in (REPO / folder).rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "shelve", "marshal", "cloudpickle", "joblib"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def problems(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [f"imports {alias.name}" for alias in node.names if alias.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"imports from {node.module}")
        elif isinstance(node, ast.Call):
            found += call_problems(node)
    label = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    return [f"{label}:{problem}" for problem in found]


def call_problems(call: ast.Call) -> list[str]:
    function = call.func
    name = (function.id if isinstance(function, ast.Name)
            else function.attr if isinstance(function, ast.Attribute) else "")
    owner = function.value.id if isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name) else ""
    keywords = {k.arg: k.value for k in call.keywords}
    found = []
    if isinstance(function, ast.Name) and name in UNSAFE_BUILTINS:
        found.append(f"{call.lineno}: calls {name}()")
    if owner == "torch" and name == "load":
        found.append(f"{call.lineno}: torch.load (pickle): use safetensors")
    if owner == "yaml" and name == "load":
        found.append(f"{call.lineno}: yaml.load: use yaml.safe_load")
    for flag in ("allow_pickle", "shell"):
        value = keywords.get(flag)
        if isinstance(value, ast.Constant) and value.value is True:
            found.append(f"{call.lineno}: {flag}=True")
    return found


def test_sources_were_found():
    assert len(SOURCES) > 40


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_pickle_eval_or_shell(path):
    assert problems(path) == []


def test_the_scan_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport torch, yaml, subprocess\neval('1')\ntorch.load('x')\n"
                   "yaml.load(s)\nsubprocess.run('ls', shell=True)\n")
    found = problems(bad)
    assert len(found) == 5, found
