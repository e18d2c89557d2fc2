"""The house (CONTRIBUTING.md): one folder per part, imports that run downward only, modules and classes of a
readable size, no near-twin names, entry points that import only what they use, and no call into a private function
of Lightning, torch, MLflow, Hydra or torchmetrics on the default path of either implementation."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "src" / "softmax_lab"
# The floors, top to bottom: a part imports only from floors beneath it (or from itself)
FLOORS = {"jobs": 6, "tracking": 5, "search": 4, "trainer": 3,
          "pictures": 3, "steps": 2, "data": 2, "maths": 1, "base": 0}
BASE = {"__init__", "config", "errors", "signals", "console", "files"}
TWINS = {"s", "ing", "ion", "uation", "ation"}  # train/training, predict/prediction, eval/evaluation, model/models
STACK = ("pytorch_lightning", "lightning_fabric", "lightning", "torch", "mlflow", "hydra", "omegaconf", "torchmetrics")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def part_of(module: str) -> str:
    """softmax_lab.tracking.run -> tracking; softmax_lab.jobs (a part itself, `from softmax_lab import jobs` or
    `from softmax_lab.jobs import naming`) -> jobs; softmax_lab.errors -> base."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else "base"


def test_one_folder_per_part():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(FLOORS) - {"base"}
    assert {p.stem for p in PACKAGE.glob("*.py")} == BASE


def imports_of(path: Path) -> set[str]:
    """Every softmax_lab module a file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("softmax_lab"):
            found |= {f"{node.module}.{a.name}" if node.module.count(".") == 0 else node.module for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("softmax_lab")}
    return found


@pytest.mark.parametrize("spelling", ["from softmax_lab import jobs", "from softmax_lab.jobs import naming",
                                      "import softmax_lab.jobs.naming", "from softmax_lab.jobs.naming import run_name"])
def test_an_upward_import_is_seen_in_every_spelling(tmp_path, spelling):
    module = tmp_path / "losses.py"
    module.write_text(f"{spelling}\n")
    assert {part_of(m) for m in imports_of(module)} == {"jobs"}


def test_imports_run_downward_only():
    upward = []
    for path in modules():
        here = "base" if path.parent == PACKAGE else path.parent.name
        for imported in imports_of(path):
            there = part_of(imported)
            if there != here and FLOORS[there] >= FLOORS[here]:
                upward.append(f"{path.relative_to(PACKAGE)} ({here}) imports {imported} ({there})")
    assert not upward, upward


def test_modules_and_classes_are_a_readable_size():
    long_modules = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > 300}
    long_classes = {}
    for p in modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef) and (n := node.end_lineno - node.lineno + 1) > 120:
                long_classes[f"{p.relative_to(PACKAGE)}:{node.name}"] = n
    assert not long_modules and not long_classes, (long_modules, long_classes)


def test_no_two_names_twin():
    stems = {p.stem for p in ROOT.joinpath("src").rglob("*.py")} - {"__init__"}
    twins = sorted((a, b) for a in stems for b in stems if a != b and b.startswith(a) and b[len(a):] in TWINS)
    assert not twins and not {"module", "models"} <= stems, twins


@pytest.mark.parametrize("script", ["src/train.py", "src/eval.py", "src/predict.py"])
def test_help_imports_neither_torch_nor_lightning_nor_mlflow(script):
    probe = ("import runpy, sys\nsys.argv = [sys.argv[1], '--help']\ntry:\n    runpy.run_path(sys.argv[0], "
             "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('LOADED', sorted(m for m in ('torch', "
             "'pytorch_lightning', 'mlflow', 'torchmetrics') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe, script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "LOADED []" in r.stdout and "== Config" in r.stdout and "ckpt_path" in r.stdout, \
        r.stdout[-500:] + r.stderr[-500:]


def test_a_value_the_config_refuses_is_said_before_torch_is_imported():
    probe = ("import runpy, sys\nsys.argv = ['src/train.py', 'optimizer.lr=-1', 'logger=none']\ntry:\n"
             "    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as e:\n"
             "    print('EXIT', e.code)\n"
             "print('LOADED', sorted(m for m in ('torch', 'pytorch_lightning', 'mlflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "EXIT 1" in r.stdout and "LOADED []" in r.stdout, r.stdout[-500:] + r.stderr[-500:]
    assert "optimizer.lr=-1 is not allowed" in r.stderr + r.stdout


def test_predict_loads_neither_lightning_nor_mlflow():
    probe = ("import sys; sys.path.insert(0, 'src'); import softmax_lab.jobs.predict_job, softmax_lab.jobs.outcome; "
             "print('LOADED', sorted(m for m in ('pytorch_lightning', 'mlflow', 'torchmetrics') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "LOADED []" in r.stdout, r.stdout[-500:] + r.stderr[-500:]


class PrivateCalls:
    """Records each call from a frame of src/ into a private (single underscore) Python function of the stack."""

    IMPLICIT = {"_wrapped_call_impl", "_call_impl"}  # what `module(x)` runs: nn.Module.__call__, not a private use

    def __init__(self):
        self.found: dict[str, int] = {}
        self.src = str(ROOT / "src")

    def __call__(self, frame, event, arg):
        if event != "call":
            return
        name = frame.f_code.co_name
        if not name.startswith("_") or name.startswith("__") or name in self.IMPLICIT:
            return
        caller = frame.f_back
        if caller is None or not os.path.realpath(caller.f_code.co_filename).startswith(self.src):
            return
        callee = frame.f_code.co_filename.replace(os.sep, "/").split("/site-packages/")
        if len(callee) == 2 and callee[1].split("/")[0] in STACK:
            key = f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} -> {callee[1]}:{name}"
            self.found[key] = self.found.get(key, 0) + 1


@pytest.mark.slow  # every Python call goes through the profiler: a tiny run takes a minute
@pytest.mark.parametrize("impl", ["scratch", "nn"])
def test_the_default_path_calls_no_private_function_of_the_stack(make_cfg, impl):
    from softmax_lab.jobs.train_job import train

    cfg = make_cfg(f"impl={impl}")  # the defaults: data.batches_per_step=1, MLflow, checkpoints, pictures, the model
    probe = PrivateCalls()
    sys.setprofile(probe)
    threading.setprofile(probe)
    try:
        train(cfg)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert not probe.found, probe.found
