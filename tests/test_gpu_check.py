"""`make gpu-check` keeps working before the day a GPU is lent: its plan run on the CPU (--accelerator cpu, DDP as
trainer=ddp_cpu) on the tiny data, and its one line where no GPU is."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, unmeasured_env

pytestmark = pytest.mark.slow


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args], cwd=ROOT, capture_output=True,
                          text=True, env=unmeasured_env(), timeout=600)


def test_the_plan_on_the_cpu_trains_each_precision_and_ddp(tiny_data, tmp_path):
    out = tmp_path / "gpu_check.json"
    r = gpu_check("--accelerator", "cpu", "--impl", "scratch", "--epochs", "2", "--data-dir", str(tiny_data),
                  "--override", "data.val_size=100", "--out", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"scratch/32-true", "scratch/bf16-mixed", "ddp"}
    for key, run in report["runs"].items():  # what each run's MLflow params say it trained
        assert run["status"] == "FINISHED" and run["epochs"] == 2 and 0 < run["test_acc"] <= 1, (key, run)
        assert run["x_plain_loop"] == pytest.approx(run["median_epoch_s"] / report["plain_loop_epoch_s"], abs=0.01)
    assert report["runs"]["scratch/bf16-mixed"]["precision"] == "bf16-mixed"
    assert report["runs"]["scratch/32-true"]["impl"] == "scratch" and report["runs"]["ddp"]["impl"] == "nn"
    assert report["runs"]["ddp"]["processes"] == 2 and report["plain_loop_epoch_s"] > 0
    assert "scratch/bf16-mixed" in r.stdout and "plain loop on the cpu" in r.stdout


def test_a_failed_run_fails_the_check_with_its_reason(tiny_data, tmp_path):
    r = gpu_check("--accelerator", "cpu", "--impl", "nn", "--epochs", "1", "--data-dir", str(tiny_data),
                  "--override", "data.val_size=100", "--override", "optimizer.lr=-1", "--out", str(tmp_path / "g.json"))
    assert r.returncode == 1
    report = json.loads((tmp_path / "g.json").read_text())
    assert not any(run["ok"] for run in report["runs"].values())
    assert "optimizer.lr" in report["runs"]["nn/32-true"]["error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the check runs instead of refusing")
def test_without_a_gpu_it_says_so_in_one_line():
    r = gpu_check()
    assert r.returncode == 2 and r.stdout.count("\n") == 1 and "no CUDA device" in r.stdout, r.stdout + r.stderr
