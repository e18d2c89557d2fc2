"""`make bench` keeps working: a two-epoch smoke run of the benchmark on the tiny data (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, unmeasured_env

pytestmark = pytest.mark.slow


def test_benchmark_smoke(tiny_data, tmp_path):
    out = tmp_path / "epoch.json"
    r = subprocess.run([sys.executable, "benchmarks/bench.py", "--quick", "--epochs", "2", "--data-dir", str(tiny_data),
                        "--out", str(out), "--override", "data.val_size=100"],
                       cwd=ROOT, capture_output=True, text=True, env=unmeasured_env(), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["epoch"]) == {"plain_autograd", "plain_analytic", "ours_nn", "ours_scratch", "ours_func",
                                      "ours_nn_speed", "ours_scratch_speed", "ours_func_speed"}
    assert report["func_vs_nn_epoch"] > 0
    for impl in ("nn", "scratch", "func"):  # each row measured the impl it names (read back from its run's params)
        assert report["epoch"][f"ours_{impl}"]["impl"] == report["epoch"][f"ours_{impl}_speed"]["impl"] == impl
    assert report["epoch"]["plain_autograd"]["ratio_vs_plain"] == 1.0
    assert all(v["median_epoch_s"] > 0 and v["epochs"] == 2 for v in report["epoch"].values())
    assert "ours_scratch" in r.stdout
