"""train(cfg) end to end on the tiny data: every loss x impl, determinism, checkpoints, MLflow, eval."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import compose, fit_only, last_ckpt, mlflow_runs, weights
from softmax_lab.errors import ConfigError
from softmax_lab.jobs.train_job import train

LOSSES = ["ce", "mse", "margin", "huber", "l1", "bce"]


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_takes_the_same_steps_in_both_impls(make_cfg, loss):
    cfgs = {impl: make_cfg(f"loss={loss}", f"impl={impl}", "+trainer.max_steps=5", "logger=none", "data.batch_size=64",
                           "optimizer.momentum=0.9") for impl in ("scratch", "nn")}
    cfgs["scratch"].paths.output_dir += "-scratch"
    for cfg in cfgs.values():
        fit_only(cfg)
    W = {impl: weights(cfg) for impl, cfg in cfgs.items()}
    assert last_ckpt(cfgs["scratch"])["global_step"] == last_ckpt(cfgs["nn"])["global_step"] == 5
    torch.testing.assert_close(W["scratch"], W["nn"], rtol=1e-5, atol=1e-6)
    torch.manual_seed(42)  # the seed's initial draw: the steps moved it
    assert (W["nn"] - torch.randn(784, 10) * 0.01).abs().max() > 1e-4


@pytest.mark.parametrize("impl", ["scratch", "nn"])
def test_seeded_runs_repeat_exactly_and_learn(make_cfg, impl):
    runs = {}
    for name, extra in (("a", []), ("b", []), ("seed7", ["seed=7"])):
        cfg = make_cfg(f"impl={impl}", "logger=none", "trainer.max_epochs=3", *extra)
        cfg.paths.output_dir += f"-{name}"
        runs[name] = fit_only(cfg).trainer.callback_metrics, weights(cfg)
    (a, Wa), (b, Wb), (c, Wc) = runs["a"], runs["b"], runs["seed7"]
    assert torch.equal(Wa, Wb) and not torch.equal(Wa, Wc)
    for key in ("train/loss", "val/acc", "val/loss"):
        assert a[key] == b[key], key
    assert a["train/loss"] != c["train/loss"]
    assert a["val/acc"] > 0.5  # the tiny data is learnable: chance is 0.1


def test_scratch_and_nn_train_to_the_same_model(make_cfg):
    cfgs = {impl: make_cfg(f"impl={impl}", "logger=none", "optimizer.momentum=0.9", "optimizer.weight_decay=1e-3")
            for impl in ("scratch", "nn")}
    cfgs["scratch"].paths.output_dir += "-scratch"
    s, n = (fit_only(cfg).trainer.callback_metrics for cfg in cfgs.values())
    assert s["val/acc"] == n["val/acc"] and float(s["train/loss"]) == pytest.approx(float(n["train/loss"]), rel=1e-3)
    torch.testing.assert_close(weights(cfgs["scratch"]), weights(cfgs["nn"]), rtol=1e-4, atol=1e-6)


def test_explicit_lr_wins_over_the_loss_default(make_cfg):
    assert make_cfg("loss=mse").optimizer.lr == 0.01
    assert make_cfg("loss=ce").optimizer.lr == 0.15
    assert make_cfg("loss=mse", "optimizer.lr=0.05").optimizer.lr == 0.05
    assert make_cfg("loss=mse", "optimizer=adam").optimizer.lr == 0.001


@pytest.mark.parametrize("impl", ["scratch", "nn"])
def test_two_classes_train_logistic_regression(make_cfg, impl):
    # with two classes the cross-entropy's gradient moves o_1 and o_0 by equal and opposite amounts, so every step
    # (momentum included) changes the two columns of W oppositely: w_0 + w_1 keeps its initial value, and the
    # model is the one logistic regression w = w_1 - w_0
    cfg = make_cfg("data.classes=[0,6]", "logger=none", f"impl={impl}", "optimizer.momentum=0.9")
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.9
    W, b = (last_ckpt(cfg)["state_dict"][k] for k in (("net.W", "net.b") if impl == "scratch" else
                                                         ("net.1.weight", "net.1.bias")))
    W = W if impl == "scratch" else W.T
    torch.manual_seed(42)
    W0 = torch.randn(784, 2) * 0.01
    assert W.shape == (784, 2) and (W - W0).abs().max() > 0.01  # it learned
    torch.testing.assert_close(W.sum(1), W0.sum(1), rtol=0, atol=1e-5)
    torch.testing.assert_close(b.sum(), torch.tensor(0.0), rtol=0, atol=1e-5)


def test_checkpoints_load_with_weights_only(make_cfg):
    cfg = make_cfg("logger=none")
    train(cfg)
    ckpt_dir = Path(cfg.paths.output_dir) / "checkpoints"
    names = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
    assert "last.ckpt" in names and any(n.startswith("best-epoch") for n in names)
    ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["impl"] == "nn" and len(ckpt["history"]) == 2
    assert ckpt["datamodule_hyper_parameters"]["val_size"] == 100


def test_a_run_is_recorded_whole_in_mlflow(make_cfg, tmp_path):
    cfg = make_cfg("loss=huber", "impl=scratch", "trainer.max_epochs=3", "trainer.log_every_n_steps=2")
    metrics = train(cfg)
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(runs) == 1
    run = runs[0]
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "loss=huber impl=scratch"
    # params: each setting once, under the key a user types; no paths, no class paths
    params = run.data.params
    assert params["loss"] == "huber" and params["loss.delta"] == "1.0" and params["optimizer"] == "sgd"
    assert params["optimizer.lr"] == "0.01" and params["impl"] == "scratch" and params["data.batch_size"] == "256"
    assert 15 <= len(params) <= 45
    assert not [k for k, v in params.items() if "/" in v or "_target_" in k or k.startswith("model.loss")]
    # tags: the per-run paths, MLflow's own user / source fields, a description
    tags = run.data.tags
    assert tags["loss"] == "huber" and tags["impl"] == "scratch" and tags["run_dir"] == str(cfg.paths.output_dir)
    assert tags["mlflow.source.name"] == "src/train.py" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.user"] and "mlflow.source.git.commit" in tags
    assert "test accuracy" in tags["mlflow.note.content"]
    # metrics at the SGD step ending each epoch: 500 training images in batches of 256 are 2 steps an epoch
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "val/nll", "val/ece", "time/epoch_s",
                "time/samples_per_s"):
        assert [m.step for m in client.get_metric_history(rid, key)] == [2, 4, 6], key
    best = [m.value for m in client.get_metric_history(rid, "val/acc_best")]
    assert best == sorted(best)
    assert [m.step for m in client.get_metric_history(rid, "train/loss_step")] == [2, 4, 6]
    for key in ("test/acc", "test/loss", "test/nll", "test/ece", "test/brier"):
        assert run.data.metrics[key] == pytest.approx(metrics[key]), key
    assert not [k for k in run.data.metrics if k.startswith("test/acc_class")]  # a table and a chart instead
    artifacts = {a.path for d in ("", "pictures", "checkpoints", "tables") for a in client.list_artifacts(rid, d)}
    assert {"config.yaml", "overrides.yaml", "pictures/samples.png", "pictures/predictions.png",
            "pictures/confusion_matrix.png", "pictures/curves.png", "pictures/reliability.png",
            "pictures/per_class_accuracy.png", "pictures/mistakes.png", "tables/per_class_accuracy.csv"} <= artifacts
    assert any(a.startswith("checkpoints/best-epoch") for a in artifacts)
    local = Path(client.download_artifacts(rid, "pictures", str(tmp_path / "dl")))
    sizes = {p.name: Image.open(p).size for p in local.glob("*.png")}
    assert sizes["samples.png"] == (1350, 380) and sizes["curves.png"] == (650, 440)
    table = Path(client.download_artifacts(rid, "tables/per_class_accuracy.csv", str(tmp_path / "dl2")))
    rows = table.read_text().splitlines()
    assert rows[0] == "class_id,class,test_acc" and len(rows) == 11 and rows[10].startswith("9,ankle boot,")


def test_the_best_model_is_an_mlflow_model(make_cfg, tmp_path):
    import mlflow

    cfg = make_cfg("impl=nn", "data.resize=14")  # the model prepares raw 28x28 pixels as the run did
    train(cfg)
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    models = mlflow.search_logged_models(experiment_ids=[runs[0].info.experiment_id], output_format="list")
    assert [m.source_run_id for m in models] == [runs[0].info.run_id]
    model = mlflow.pyfunc.load_model(models[0].model_uri)
    example = model.input_example
    assert example.shape == (5, 784) and example.dtype == "float32" and 0 <= example.min() <= example.max() <= 1
    out = model.predict(example)
    # the oracle: the best checkpoint's own weights on the data module's prepared test images
    from conftest import compose  # noqa: F401
    from softmax_lab.data.datamodule import FashionMNISTDataModule

    best = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-epoch*.ckpt"))
    ckpt = torch.load(best, weights_only=True)
    dm = FashionMNISTDataModule(**ckpt["datamodule_hyper_parameters"])
    dm.load()
    O = dm.splits["test"][0][:5] @ ckpt["state_dict"]["net.1.weight"].T + ckpt["state_dict"]["net.1.bias"]
    assert out["class_id"].tolist() == O.argmax(1).tolist()
    torch.testing.assert_close(torch.tensor(out["probability"].to_numpy()), torch.softmax(O, 1).max(1).values)
    assert out["class_name"].tolist() == [dm.class_names[i] for i in O.argmax(1).tolist()]
    assert list(out.columns[:3]) == ["class_id", "class_name", "probability"] and "p_ankle_boot" in out.columns


def test_the_model_can_be_registered(make_cfg, tmp_path):
    train(make_cfg("impl=scratch", "logger.registered_model_name=fashion-softmax"))
    client, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    versions = client.search_model_versions("name='fashion-softmax'")
    assert [int(v.version) for v in versions] == [1] and versions[0].run_id == runs[0].info.run_id
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/fashion-softmax/1")
    assert len(model.predict(model.input_example)) == 5


def test_no_secret_reaches_params_or_tags(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    train(make_cfg())
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    values = list(runs[0].data.params.values()) + list(runs[0].data.tags.values())
    assert not any("hunter2" in v for v in values)
    assert not any("tracking_uri" in k for k in runs[0].data.params)


def test_config_errors_come_before_any_run(make_cfg, tmp_path):
    with pytest.raises(ConfigError) as e:
        train(make_cfg("optimizer.lr=-1", "data.batch_size=0"))
    assert "optimizer.lr=-1" in str(e.value) and "data.batch_size=0" in str(e.value)
    assert not (tmp_path / "mlflow.db").exists()


def test_eval_reproduces_the_training_runs_test_accuracy(make_cfg, tmp_path, tiny_data):
    from softmax_lab.jobs.eval_job import evaluate

    cfg = make_cfg("impl=scratch", "trainer.max_epochs=3")
    metrics = train(cfg)
    best = next((Path(cfg.paths.output_dir) / "checkpoints").glob("best-epoch*.ckpt"))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ecfg = compose_eval([f"ckpt_path={best}", f"data_dir={tiny_data}", f"logger.tracking_uri={store}"],
                        tmp_path / "eval")
    result = evaluate(ecfg)
    assert result["test/acc"] == metrics["test/acc"]
    client, runs = mlflow_runs(store)
    train_run = next(r for r in runs if r.data.tags.get("kind") == "train")
    eval_run = next(r for r in runs if r.data.tags.get("kind") == "eval")
    assert eval_run.data.tags["source_run_id"] == train_run.info.run_id and eval_run.info.status == "FINISHED"
    assert eval_run.data.tags["state"] == "finished"
    assert (tmp_path / "eval" / "confusion_matrix.png").exists()
    # it says what it evaluated, linked to its training run, and measured on the training run's test dataset
    note = eval_run.data.tags["mlflow.note.content"]
    assert note.startswith(f"**Evaluation** of checkpoint `{best.name}` from training run [{train_run.info.run_name}]"
                           f"(#/experiments/{train_run.info.experiment_id}/runs/{train_run.info.run_id})")
    assert f"test accuracy **{metrics['test/acc']:.4f}**" in note
    [test_input] = eval_run.inputs.dataset_inputs
    trained_on = {i.dataset.digest: i.dataset.name for i in train_run.inputs.dataset_inputs}
    assert trained_on[test_input.dataset.digest] == test_input.dataset.name == "fashion-mnist test"
    # the leaderboard the printed link opens leaves it out; the training run is in it
    from softmax_lab.tracking.uris import LEADERBOARD_FILTER

    shown = client.search_runs([train_run.info.experiment_id], filter_string=LEADERBOARD_FILTER)
    assert [r.info.run_id for r in shown] == [train_run.info.run_id]


def compose_eval(overrides, output_dir):
    return compose(overrides, output_dir, config_name="eval")


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"garbage", "not a readable checkpoint")])
def test_eval_refuses_missing_or_corrupt_checkpoints(tmp_path, content, message):
    from softmax_lab.jobs.eval_job import evaluate
    from softmax_lab.trainer.checkpoints import CheckpointError

    path = tmp_path / "x.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        evaluate(compose_eval([f"ckpt_path={path}", "logger=none"], tmp_path / "eval"))


def test_eval_given_a_directory_names_the_checkpoints_in_it(tmp_path):
    from softmax_lab.jobs.eval_job import evaluate
    from softmax_lab.trainer.checkpoints import CheckpointError

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("best-epoch03.ckpt", "last.ckpt"):
        (run_dir / "checkpoints" / name).write_bytes(b"")
    for given in (run_dir, run_dir / "checkpoints"):
        with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file. It holds .*best-epoch03"):
            evaluate(compose_eval([f"ckpt_path={given}", "logger=none"], tmp_path / "eval"))


def test_a_run_writes_where_its_seconds_went(make_cfg):
    import json
    import time

    t = time.perf_counter()
    cfg = make_cfg()
    train(cfg)
    wall = time.perf_counter() - t
    record = json.loads((Path(cfg.paths.output_dir) / "phases.json").read_text())
    phases = record["phases_s"]
    assert list(phases)[-6:] == ["build, data and store", "run records (config, params, datasets)", "fit", "test",
                                 "pictures (drawn) and model (logged), side by side", "artifacts and description"]
    assert record["epochs"] == 2 and 0 < record["epochs_s"] < phases["fit"]
    assert sum(v for k, v in phases.items() if not k.startswith("start-up")) <= wall


def test_composes_like_the_cli(tmp_path):
    cfg = compose(["loss=margin", "impl=scratch", "loss.margin=2"], tmp_path)
    assert cfg.model.impl == "scratch" and cfg.loss.margin == 2 and cfg.optimizer.lr == 0.1  # margin keeps 0.1


@pytest.mark.parametrize("impl", ["scratch", "nn"])
@pytest.mark.parametrize("group", [None, 3], ids=["default-mode", "speed-mode"])
@pytest.mark.parametrize("deferred", [False, True], ids=["checked-every-step", "read-every-few-steps"])
def test_divergence_names_the_first_bad_step_either_way(impl, group, deferred):
    # 8 minibatches of 8 (in groups of 3 in the speed mode); minibatch 4 (0-based) holds a non-finite pixel,
    # so SGD step 5 is the first whose loss is not finite.
    import pytorch_lightning as pl

    from softmax_lab.data.batches import TensorBatches
    from softmax_lab.errors import DivergenceError
    from softmax_lab.steps.lightning_module import SoftmaxRegressionModule

    X, y = torch.rand(64, 784), torch.arange(64) % 10
    X[4 * 8 + 5, 100] = float("inf")
    module = SoftmaxRegressionModule(impl=impl, batches_per_step=group or 1)
    module.divergence_deferred = deferred  # the accelerator mode (deferred) runs on the CPU too
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(DivergenceError) as e:
        trainer.fit(module, train_dataloaders=TensorBatches(X, y, 8, group=group))
    assert (e.value.epoch, e.value.step) == (0, 5) and not torch.isfinite(torch.tensor(e.value.loss))
    assert "learning rate" in e.value.advice and module.guard.deferred is deferred
