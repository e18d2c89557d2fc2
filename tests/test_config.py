"""Every value a user can type is checked before any data is read or run created: one message naming the key,
what is allowed and an example. (The command line's one-line, no-traceback form: test_cli.py.)"""

from __future__ import annotations

import re

import pytest

from conftest import compose
from softmax_lab.config import validate_config, validate_eval_config
from softmax_lab.errors import ConfigError


@pytest.mark.parametrize("overrides, says", [
    (["seed=-1"], "seed=-1 is not allowed: expected an integer in 0..4294967295 (e.g. seed=42)"),
    (["seed=4294967296"], "seed=4294967296 is not allowed"),
    (["trainer.log_every_n_steps=-5"], "trainer.log_every_n_steps=-5 is not allowed: expected an integer >= 0"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not allowed: expected a finite number > 0"),
    (["optimizer.lr=nan"], "optimizer.lr=nan is not allowed"),
    (["optimizer.weight_decay=inf"], "optimizer.weight_decay=inf is not allowed: expected a finite number >= 0"),
    (["loss=margin", "loss.margin=inf"], "loss.margin=inf is not allowed: expected a number > 0 that float32 holds"),
    (["loss=margin", "loss.margin=1e39"], "loss.margin=1e+39 is not allowed"),
    (["loss=huber", "loss.delta=-inf"], "loss.delta=-inf is not allowed"),
    (["model.init_std=inf"], "model.init_std=inf is not allowed"),
    (["+optimizer.betas=[0.9,0.99]"], "optimizer.betas not an option of torch.optim.SGD (its options: "),
    (["optimizer.nesterov=true"], "optimizer.nesterov=true needs momentum > 0 and dampening = 0"),
    (["impl=scratch", "optimizer.nesterov=true"], "optimizer.nesterov=true needs momentum > 0"),
    (["optimizer=adam", "+optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5] is not allowed: expected two"),
    (["optimizer=adam", "+optimizer.momentum=0.9"], "optimizer.momentum not an option of torch.optim.Adam"),
    (["data.resize=1000"], "data.resize=1000 needs about"),
    (["data.split_seed=-3"], "data.split_seed=-3 is not allowed"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed: expected an integer >= 1 (or -1: no limit)"),
    (["data.batches_per_step=0"], "data.batches_per_step=0 is not allowed"),
    (["optimizer.lr=-0.1", "data.batch_size=0"], "data.batch_size=0 is not allowed: expected an integer >= 1"),
    (["data.val_size=60000"], "data.val_size=60000 is not allowed: expected an integer in 1..59999"),
    (["loss=margin", "loss.margin=0"], "loss.margin=0 is not allowed"),
    (["loss=huber", "loss.delta=-1"], "loss.delta=-1 is not allowed"),
    (["model.init_std=-0.01"], "model.init_std=-0.01 is not allowed"),
    (["data.classes=[0,0,3]"], "data.classes=[0, 0, 3] is not allowed: expected null or a list of two or more"),
    (["data.classes=[3]"], "data.classes=[3] is not allowed"),
    (["data.classes=[0,12]"], "data.classes=[0, 12] is not allowed"),
    (["loss=mse", "loss.on=sigmoid"], "loss.on='sigmoid' is not allowed: expected logits or probs"),
    (["data.normalize=maybe"], "data.normalize='maybe' is not allowed: expected true or false"),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs=1.5 is not allowed"),
    (["optimizer.lr=abc"], "optimizer.lr='abc' is not allowed"),
])
def test_values_out_of_range_are_refused_with_key_range_and_example(tmp_path, overrides, says):
    with pytest.raises(ConfigError) as e:
        validate_config(compose(overrides, tmp_path))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_all_faults_are_listed_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        validate_config(compose(["seed=-1", "optimizer.lr=0", "data.batch_size=0"], tmp_path))
    assert all(k in str(e.value) for k in ("seed=-1", "optimizer.lr=0", "data.batch_size=0"))


@pytest.mark.parametrize("overrides", [
    [], ["loss=bce"], ["optimizer=adam"], ["optimizer.momentum=0.9", "optimizer.nesterov=true"], ["seed=0"],
    ["seed=4294967295"], ["trainer.max_epochs=-1"], ["trainer.log_every_n_steps=0"], ["data.resize=64"],
    ["experiment=best_linear"], ["optimizer=adam", "+optimizer.betas=[0.8,0.99]", "+optimizer.amsgrad=true"],
])
def test_what_is_allowed_passes(tmp_path, overrides):
    validate_config(compose(overrides, tmp_path))


def test_resize_memory_is_measured_against_the_machine(tmp_path, monkeypatch):
    from softmax_lab import config

    monkeypatch.setattr(config, "available_memory", lambda: 4 * 2**30)  # 4 GiB
    validate_config(compose(["data.resize=64"], tmp_path))  # 70k x (4096 + 784) x 4 B = 1.4 GB: fits
    with pytest.raises(ConfigError, match=r"data.resize=128 needs about 4\.\d GiB .* 4\.0 GiB available"):
        validate_config(compose(["data.resize=128"], tmp_path))
    validate_config(compose(["data.resize=128", "data.classes=[0,6]"], tmp_path))  # a fifth of the images


@pytest.mark.parametrize("overrides, says", [
    ([], "ckpt_path is required"), (["ckpt_path=x.ckpt", "batch_size=0"], "batch_size=0 is not allowed"),
])
def test_eval_keys_are_checked(tmp_path, overrides, says):
    with pytest.raises(ConfigError, match=says):
        validate_eval_config(compose(overrides, tmp_path, config_name="eval"))


# ---- Lightning's Trainer flags on the command line: Lightning's meaning, or refused with the project's way ----

def test_help_lists_every_trainer_flag_lightning_has_and_how_to_give_it():
    import inspect
    import re
    import subprocess
    import sys

    import pytorch_lightning as pl

    from conftest import ROOT

    r = subprocess.run([sys.executable, "src/train.py", "loss=mse", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    section = r.stdout.split("== Lightning's Trainer flags")[1].split("== Config")[0]
    listed = set(re.findall(r"\b([a-z][a-z0-9]*(?:_[a-z0-9]+)+|[a-z]+)\b(?=[,=\s(])", section))
    flags = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
    assert flags <= listed, flags - listed
    assert "loss: bce, ce, huber, l1, margin, mse" in r.stdout  # the groups
    assert "_target_: softmax_lab.maths.losses.SquaredError" in r.stdout  # the config the overrides give


@pytest.mark.parametrize("flag, says", [("+trainer.logger=false", "logger=none"),
                                        ("+trainer.callbacks=[]", "~callbacks.<name>"),
                                        ("+trainer.plugins=[]", "trainer.precision"),
                                        ("+trainer.barebones=true", "data.batches_per_step=8")])
def test_trainer_arguments_the_project_gives_are_refused_with_its_way(flag, says):
    from softmax_lab.trainer.flags import plan

    cfg = compose([flag], "/tmp/unused")
    with pytest.raises(ConfigError, match=re.escape(says)):
        plan(cfg.trainer, "nn", 1, cfg.callbacks)
    plan(compose(["+trainer.barebones=false"], "/tmp/unused").trainer, "nn", 1, {})  # Lightning's default: fine


@pytest.mark.parametrize("argv, says", [
    (["+trainer.default_root_dir=/tmp/x"], "Fix: trainer.default_root_dir=/tmp/x"),  # Hydra: "HydraConfig was not set"
    (["trainer=cpu", "+trainer.max_epochs=3"], "Fix: trainer.max_epochs=3"),
    (["+seed=3"], "Fix: seed=3"),
    (["+trainer.limit_train_batches=3", "++trainer.max_epochs=2", "+callbacks.extra={}"], None)])
def test_a_plus_on_a_key_the_config_has_is_refused_before_hydra_reads_it(argv, says):
    from softmax_lab.config import existing_key_added

    message = existing_key_added(argv)
    assert (message is None) if says is None else (says in message and "already in the config" in message)
