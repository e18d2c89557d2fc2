"""Sweeps on Ray: `hydra/launcher=ray` (hydra-ray-launcher) runs a sweep's jobs on a local Ray cluster, each recorded
under the sweep's parent run with its summary, as the other launchers do."""

from __future__ import annotations

import pytest

from conftest import mlflow_runs, run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def test_a_sweep_on_a_local_ray_cluster_is_one_parent_with_its_jobs(tiny_data, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = run_cli(["-m", "hydra/launcher=ray", "loss=ce,mse", *tiny_overrides(tiny_data), f"hydra.sweep.dir={tmp_path}"
                 "/sweep", "+hydra.launcher.ray.init.num_cpus=2"], env={"MLFLOW_TRACKING_URI": store}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _, runs = mlflow_runs(store)
    [parent] = [x for x in runs if x.data.tags.get("kind") == "sweep"]
    jobs = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(x.data.tags["loss"] for x in jobs) == ["ce", "mse"]
    assert all(x.info.status == "FINISHED" for x in [parent, *jobs])
    assert (tmp_path / "sweep" / "sweep_summary.md").read_text().count("| FINISHED |") == 2
    assert "Ray Launcher is launching 2 jobs" in r.stdout + r.stderr
    assert "Tip:" not in r.stdout + r.stderr  # Lightning's banners are quiet in Ray's workers too
