"""Resume continues the interrupted run: its run dir, its MLflow run, its history without gaps or repeats,
its best checkpoint; what it cannot honour is refused before any run. (Signals and SIGKILL: test_cli.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import mlflow_runs
from softmax_lab.jobs.train_job import train
from softmax_lab.trainer.checkpoints import CheckpointError


def last(cfg) -> Path:
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_training_on_continues_the_same_run_and_equals_a_straight_run(make_cfg, tmp_path):
    first = make_cfg("impl=scratch", "optimizer.momentum=0.9", "trainer.max_epochs=2")
    train(first)
    resumed = make_cfg("impl=scratch", "optimizer.momentum=0.9", "trainer.max_epochs=4", f"ckpt_path={last(first)}")
    resumed.paths.output_dir = str(tmp_path / "elsewhere")  # as a new Hydra run dir would be
    metrics = train(resumed)
    straight_cfg = make_cfg("impl=scratch", "optimizer.momentum=0.9", "trainer.max_epochs=4")
    straight_cfg.paths.output_dir = str(tmp_path / "straight")
    straight = train(straight_cfg)

    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    continued = next(r for r in runs if "resumed_from" in r.data.tags)
    other = next(r for r in runs if "resumed_from" not in r.data.tags)
    assert continued.data.tags["run_dir"] == first.paths.output_dir  # the interrupted run's own dir
    assert not (tmp_path / "elsewhere" / "checkpoints").exists()
    assert continued.data.tags["resumed_with"] == "trainer.max_epochs=4"  # MLflow params cannot change
    for key in ("train/loss", "val/acc", "val/acc_best", "train/loss_step", "epoch"):
        assert history(client, continued.info.run_id, key) == history(client, other.info.run_id, key), key
    for key in ("test/acc", "test/loss", "val/acc_best"):
        assert metrics[key] == straight[key], key
    a, b = torch.load(last(first), weights_only=True), torch.load(last(straight_cfg), weights_only=True)
    assert torch.equal(a["state_dict"]["net.W"], b["state_dict"]["net.W"]) and len(a["history"]) == 4


def test_a_finished_run_has_nothing_left_to_train(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=2")
    train(cfg)
    with pytest.raises(CheckpointError, match=r"nothing left to train: .* 2 epoch\(s\) and trainer.max_epochs=2"):
        train(make_cfg("trainer.max_epochs=2", f"ckpt_path={last(cfg)}"))
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.info.status for r in runs] == ["FINISHED"]


def test_a_run_interrupted_after_training_is_finished_by_its_resume(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=2")
    train(cfg)
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.set_terminated(runs[0].info.run_id, "KILLED")  # as if killed while testing or drawing
    train(make_cfg("trainer.max_epochs=2", f"ckpt_path={last(cfg)}"))
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert len(client.get_metric_history(runs[0].info.run_id, "test/acc")) == 1  # not logged twice


@pytest.fixture(scope="module")
def one_epoch(tiny_data, tmp_path_factory):
    """A finished one-epoch run: its config's overrides, its last.ckpt, its store."""
    from conftest import compose, tiny_overrides

    tmp = tmp_path_factory.mktemp("one-epoch")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = compose(tiny_overrides(tiny_data, "trainer.max_epochs=1", f"logger.tracking_uri={store}"), tmp / "run")
    train(cfg)
    return last(cfg), store


@pytest.mark.parametrize("change, says", [
    ("optimizer=adam", "was trained with optimizer=SGD"),
    ("optimizer.lr=0.05", "optimizer.lr=0.15"),
    ("loss=mse", "was trained with loss=CrossEntropy"),
    ("data.batch_size=64", "was trained with data.batch_size=256"),
    ("seed=7", "data.shuffle_seed=42"),
])
def test_resuming_into_something_else_is_refused_before_any_run(make_cfg, tmp_path, one_epoch, change, says):
    ckpt, store = one_epoch
    with pytest.raises(CheckpointError, match=says):
        train(make_cfg("trainer.max_epochs=3", change, f"ckpt_path={ckpt}"))
    assert not (tmp_path / "mlflow.db").exists() and len(mlflow_runs(store)[1]) == 1


def test_a_checkpoint_from_before_the_package_had_parts_evaluates_and_resumes(make_cfg, tmp_path, tiny_data):
    from conftest import compose
    from softmax_lab.jobs.eval_job import evaluate

    cfg = make_cfg("trainer.max_epochs=1", "logger=none", "loss=huber")
    train(cfg)
    ckpt = torch.load(last(cfg), weights_only=True)
    assert ckpt["hyper_parameters"]["loss"]["_target_"] == "softmax_lab.maths.losses.Huber"
    ckpt["hyper_parameters"]["loss"]["_target_"] = "softmax_lab.losses.Huber"  # as e95ee49 and before wrote it
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    results = [evaluate(compose([f"ckpt_path={path}", f"data_dir={tiny_data}", "logger=none"], tmp_path / name,
                                config_name="eval")) for name, path in (("now", last(cfg)), ("before", old))]
    assert results[0]["test/loss"] == results[1]["test/loss"] and results[0]["test/acc"] == results[1]["test/acc"]
    train(make_cfg("trainer.max_epochs=2", "logger=none", "loss=huber", f"ckpt_path={old}"))  # resumes, not refused
    assert torch.load(last(cfg), weights_only=True)["epoch"] == 1
