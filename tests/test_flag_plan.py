"""trainer/flags.plan, table by table: what the Trainer, the module and the data module are given for each Trainer
flag in each mode, and the one line each flag that cannot be honoured gets, word for word."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from softmax_lab.errors import ConfigError
from softmax_lab.trainer.flags import PROJECT_OWNED, FlagPlan, plan

HAND = {"accumulate_grad_batches": 1, "gradient_clip_val": None, "gradient_clip_algorithm": None}


def test_impl_nn_in_the_default_mode_leaves_every_flag_to_lightning():
    got = plan(OmegaConf.create({"accumulate_grad_batches": 4, "gradient_clip_val": 0.5}), "nn", 1, {})
    assert got == FlagPlan(trainer={}, module={"batches_per_step": 1}, data={}, by_hand=False)


@pytest.mark.parametrize("impl", ["scratch", "func"])
def test_a_hand_stepping_impl_takes_accumulation_and_clipping_from_lightning(impl):
    got = plan({"accumulate_grad_batches": 4, "gradient_clip_val": 0.5, "gradient_clip_algorithm": "VALUE"}, impl, 1,
               None)
    assert got == FlagPlan(trainer=HAND, by_hand=True,
                           module={"batches_per_step": 1, "accumulate_grad_batches": 4, "gradient_clip_val": 0.5,
                                   "gradient_clip_algorithm": "value"})


def test_the_defaults_by_hand():
    got = plan({}, "scratch", 1, {})
    assert got.module == {"batches_per_step": 1, "accumulate_grad_batches": 1, "gradient_clip_val": None,
                          "gradient_clip_algorithm": "norm"} and got.trainer == HAND and got.data == {}


def test_the_speed_mode_steps_by_hand_and_limits_batches_in_the_loader():
    got = plan({"limit_train_batches": 10}, "nn", 8, {})
    assert got.by_hand and got.module["batches_per_step"] == 8 and got.data == {"train_limit": 10}
    assert got.trainer == {**HAND, "limit_train_batches": None}
    assert plan({"limit_train_batches": 0.5}, "nn", 8, {}).data == {"train_limit": 0.5}
    assert plan({"limit_train_batches": 1.0}, "nn", 8, {}).data == {}
    assert plan({"limit_train_batches": 1}, "nn", 8, {}).data == {"train_limit": 1}
    assert plan({"val_check_interval": 1.0}, "nn", 8, {}).data == {}


def refusal(t: dict, impl: str = "scratch", n: int = 1, callbacks=None) -> str:
    with pytest.raises(ConfigError) as e:
        plan(t, impl, n, callbacks or {})
    return str(e.value)


@pytest.mark.parametrize("acc", [0, -1, 1.5, True, "2"])
def test_accumulation_must_be_a_whole_number_of_at_least_one(acc):
    assert refusal({"accumulate_grad_batches": acc}) == (
        f"trainer.accumulate_grad_batches={acc!r} is not allowed: expected an integer >= 1 "
        "(e.g. trainer.accumulate_grad_batches=4).")


@pytest.mark.parametrize("clip", [-0.1, float("inf"), float("nan"), True, "0.5"])
def test_clipping_must_be_a_finite_number_of_at_least_zero(clip):
    assert refusal({"gradient_clip_val": clip}) == (
        f"trainer.gradient_clip_val={clip!r} is not allowed: expected null or a finite number >= 0 "
        "(e.g. trainer.gradient_clip_val=0.5).")


def test_clipping_at_zero_is_allowed():
    assert plan({"gradient_clip_val": 0}, "func", 1, {}).module["gradient_clip_val"] == 0


def test_a_clipping_algorithm_is_norm_or_value():
    assert refusal({"gradient_clip_algorithm": "l2"}) == (
        "trainer.gradient_clip_algorithm='l2' is not allowed: expected norm or value "
        "(e.g. trainer.gradient_clip_algorithm=value).")


@pytest.mark.parametrize(("impl", "n", "who"), [("scratch", 1, "impl=scratch"), ("func", 1, "impl=func"),
                                                ("nn", 8, "the speed mode (data.batches_per_step>1)")])
@pytest.mark.parametrize("precision", ["16", "16-mixed"])
def test_16_bit_mixed_precision_is_refused_by_hand(impl, n, who, precision):
    assert refusal({"precision": precision}, impl, n) == (
        f"trainer.precision={precision} cannot be honoured by {who}: its gradients stay scaled until Lightning's "
        "automatic optimisation unscales them, which hand-taken SGD steps do not use. Fix: "
        "trainer.precision=bf16-mixed (no scaling needed) or 32-true, or impl=nn with data.batches_per_step=1.")


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true", "64-true", "bf16-true"])
def test_other_precisions_are_taken_by_hand(precision):
    assert plan({"precision": precision}, "scratch", 1, {}).by_hand


def test_the_speed_mode_refuses_what_counts_lightning_steps():
    counts = "counts Lightning steps, and in the speed mode a Lightning step carries 8 minibatches"
    assert refusal({"val_check_interval": 0.5}, "nn", 8).startswith(f"trainer.val_check_interval=0.5 {counts}, so it "
                                                                     "would not mean what Lightning documents. ")
    assert refusal({"val_check_interval": 100}, "nn", 8).startswith("trainer.val_check_interval=100 ")
    assert refusal({"overfit_batches": 2}, "nn", 8).startswith(f"trainer.overfit_batches=2 {counts}. ")
    assert refusal({}, "nn", 8, {"ckpt": {"every_n_train_steps": 5}}).startswith(
        "callbacks.ckpt.every_n_train_steps=5 is checked once per Lightning step, which carries 8 minibatches in the "
        "speed mode. ")
    plan({}, "nn", 8, {"ckpt": {"every_n_train_steps": 0}, "other": "not a mapping"})  # none asked: fine


@pytest.mark.parametrize("limit", [-1, 1.5, True, "10"])
def test_a_speed_mode_batch_limit_is_a_count_or_a_fraction(limit):
    assert refusal({"limit_train_batches": limit}, "nn", 8) == (
        f"trainer.limit_train_batches={limit!r} is not allowed: expected an integer >= 0 (batches) or a fraction in "
        "[0, 1] (e.g. trainer.limit_train_batches=10).")


@pytest.mark.parametrize("key", list(PROJECT_OWNED))
def test_the_projects_own_trainer_arguments_are_refused_with_its_way(key):
    assert refusal({key: "x"}, "nn") == f"trainer.{key}='x' is not passed on: {PROJECT_OWNED[key]}"


def test_barebones_is_refused_and_false_is_fine():
    assert refusal({"barebones": True}, "nn") == (
        "trainer.barebones=true turns off self.log, checkpoints and the progress bar, which every run here records its "
        "metrics, best epoch and resume point with. Fix: for raw speed use the speed mode, data.batches_per_step=8, "
        "with logger=none (docs/speed.md).")
    assert not plan({"barebones": False}, "nn", 1, {}).by_hand


@pytest.mark.parametrize("limit", [0, 0.0])
def test_a_speed_mode_batch_limit_of_zero_is_lightnings_no_training(limit):
    assert plan({"limit_train_batches": limit}, "nn", 8, {}).data == {"train_limit": limit}


def test_step_hooks_in_use_are_the_overridden_ones():
    from types import SimpleNamespace

    import pytorch_lightning as pl

    from softmax_lab.steps.bare_steps import step_hooks_in_use

    class Quiet(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            pass

    class Hooked(pl.Callback):
        def on_after_backward(self, trainer, module):
            pass

    assert not step_hooks_in_use(SimpleNamespace(callbacks=[]))
    assert not step_hooks_in_use(SimpleNamespace(callbacks=[Quiet(), pl.Callback()]))
    assert step_hooks_in_use(SimpleNamespace(callbacks=[Quiet(), Hooked()]))


@pytest.mark.parametrize(("impl", "n", "what"), [("scratch", 1, "impl=scratch (it has no autograd parameters)"),
                                                 ("func", 1, "impl=func (it has no autograd parameters)"),
                                                 ("nn", 8, "the speed mode (several backward passes per forward)")])
def test_lightnings_own_ddp_is_refused_when_stepping_by_hand_word_for_word(impl, n, what):
    import pytorch_lightning as pl

    from softmax_lab.trainer.flags import check_trainer

    trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="ddp", logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError) as e:
        check_trainer(trainer, plan({}, impl, n, {}), impl)
    assert str(e.value) == (
        f"trainer: DDPStrategy with 1 process(es) wraps the model in DistributedDataParallel, which cannot train "
        f"{what}. Fix: trainer=ddp (GPUs) or trainer=ddp_cpu, softmax-lab's DDP, which averages the hand-taken steps "
        "itself.")


def test_softmax_labs_own_ddp_and_nn_in_the_default_mode_pass():
    import pytorch_lightning as pl

    from softmax_lab.trainer.ddp_strategy import DDPStrategy
    from softmax_lab.trainer.flags import check_trainer

    ours = pl.Trainer(accelerator="cpu", devices=1, strategy=DDPStrategy(), logger=False, enable_checkpointing=False)
    check_trainer(ours, plan({}, "scratch", 1, {}), "scratch")
    lightnings = pl.Trainer(accelerator="cpu", devices=1, strategy="ddp", logger=False, enable_checkpointing=False)
    check_trainer(lightnings, plan({}, "nn", 1, {}), "nn")


def test_interpolations_in_the_trainer_and_callbacks_are_resolved():
    trainer = OmegaConf.create({"n": 4, "accumulate_grad_batches": "${n}", "gradient_clip_val": "${v}", "v": 0.5})
    got = plan(trainer, "scratch", 1, OmegaConf.create({}))
    assert got.module["accumulate_grad_batches"] == 4 and got.module["gradient_clip_val"] == 0.5
