"""Lightning Trainer flags in each mode: Lightning's own, honoured by hand, or refused before any run.

Default mode (data.batches_per_step=1), one minibatch per Lightning step:
  impl=nn       automatic optimisation: every flag is Lightning's own.
  impl=scratch, impl=func  manual optimisation (no autograd parameters), where Lightning refuses
                accumulate_grad_batches and
                gradient_clip_val: the module honours both by hand, as Lightning's automatic loop would
                (steps/hand_steps.py). Every flag that counts batches or steps is Lightning's own.
Speed mode (data.batches_per_step=N>1), N minibatches per Lightning step, every impl by hand:
  honoured in SGD steps: accumulate_grad_batches and gradient clipping (the module), max_steps and
  fast_dev_run (the module stops mid-group), limit_train_batches (the loader counts minibatches),
  log_every_n_steps (logging counts SGD steps); epoch-based flags are unaffected;
  refused: val_check_interval as a count or fraction of batches, overfit_batches, callbacks with
  every_n_train_steps (each would count groups of N).
Either way, by hand means no precision=16-mixed (its gradients are scaled until Lightning's automatic
step unscales them: impl=scratch's analytic gradients are never scaled, and a hand step's clipping and
DDP average would see scaled ones) and no DistributedDataParallel wrapper (ddp_strategy.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from softmax_lab.errors import ConfigError
from softmax_lab.steps import bare_steps

SPEED_FIX = "Fix: data.batches_per_step=1 (Lightning's own step semantics), or drop the flag."


@dataclass
class FlagPlan:
    """The one reading of data.batches_per_step and the Trainer flags: what each part is given."""

    trainer: dict = field(default_factory=dict)  # replaces the trainer config's values when instantiating
    module: dict = field(default_factory=dict)  # minibatches per Lightning step, the flags it honours by hand
    data: dict = field(default_factory=dict)  # the speed mode's limit_train_batches, in minibatches
    by_hand: bool = False  # the module takes the SGD steps itself (impl=scratch, the speed mode)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _hand_flags(t: Mapping, impl: str, speed: bool) -> dict:
    who = f"impl={impl}" if impl != "nn" else "the speed mode (data.batches_per_step>1)"
    acc = t.get("accumulate_grad_batches", 1)
    if not (isinstance(acc, int) and not isinstance(acc, bool) and acc >= 1):
        raise ConfigError(f"trainer.accumulate_grad_batches={acc!r} is not allowed: expected an integer >= 1 "
                          "(e.g. trainer.accumulate_grad_batches=4).")
    clip = t.get("gradient_clip_val")
    if clip is not None and not (_number(clip) and clip >= 0):
        raise ConfigError(f"trainer.gradient_clip_val={clip!r} is not allowed: expected null or a finite number >= 0 "
                          "(e.g. trainer.gradient_clip_val=0.5).")
    algorithm = t.get("gradient_clip_algorithm") or "norm"
    if str(algorithm).lower() not in ("norm", "value"):
        raise ConfigError(f"trainer.gradient_clip_algorithm={algorithm!r} is not allowed: expected norm or value "
                          "(e.g. trainer.gradient_clip_algorithm=value).")
    precision = str(t.get("precision", "32-true"))
    if precision in ("16", "16-mixed"):
        raise ConfigError(f"trainer.precision={precision} cannot be honoured by {who}: its gradients stay scaled "
                          "until Lightning's automatic optimisation unscales them, which hand-taken SGD steps do not "
                          "use. Fix: trainer.precision=bf16-mixed (no scaling needed) or 32-true, or impl=nn "
                          "with data.batches_per_step=1.")
    return {"accumulate_grad_batches": acc, "gradient_clip_val": clip,
            "gradient_clip_algorithm": str(algorithm).lower()}


def _speed_flags(t: Mapping, callbacks: Mapping, n: int) -> dict:
    """The speed mode's refusals; returns the train loader's minibatch limit (or {})."""
    counts = f"counts Lightning steps, and in the speed mode a Lightning step carries {n} minibatches"
    vci = t.get("val_check_interval")
    if isinstance(vci, int | float) and not isinstance(vci, bool) and vci != 1.0:
        raise ConfigError(f"trainer.val_check_interval={vci} {counts}, so it would not mean what Lightning "
                          f"documents. {SPEED_FIX}")
    if t.get("overfit_batches"):
        raise ConfigError(f"trainer.overfit_batches={t['overfit_batches']} {counts}. {SPEED_FIX}")
    for name, cb in callbacks.items():
        if isinstance(cb, Mapping) and cb.get("every_n_train_steps"):
            raise ConfigError(f"callbacks.{name}.every_n_train_steps={cb['every_n_train_steps']} is checked once per "
                              f"Lightning step, which carries {n} minibatches in the speed mode. {SPEED_FIX}")
    limit = t.get("limit_train_batches")
    if limit is None or limit == 1.0 and isinstance(limit, float):
        return {}
    if not ((isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0)
            or (isinstance(limit, float) and 0.0 <= limit <= 1.0)):
        raise ConfigError(f"trainer.limit_train_batches={limit!r} is not allowed: expected an integer >= 0 (batches) "
                          "or a fraction in [0, 1] (e.g. trainer.limit_train_batches=10).")
    return {"train_limit": limit}


# Trainer arguments the project gives the Trainer itself: a value for one on the command line is refused, with the
# project's way to say the same thing
PROJECT_OWNED = {
    "logger": "the run's logger is the `logger` group, MLflow by default. Fix: logger=none for no tracking "
              "(or logger.tracking_uri=... / logger.experiment_name=...), and drop trainer.logger.",
    "callbacks": "the Trainer's callbacks are the `callbacks` group. Fix: add one with "
                 "'+callbacks.<name>={_target_: ...}', remove one with ~callbacks.<name> (e.g. "
                 "~callbacks.model_checkpoint), or trainer.enable_checkpointing=false / enable_progress_bar=false, "
                 "and drop trainer.callbacks.",
    "plugins": "the project gives the Trainer its checkpoint writer (atomic writes). Fix: precision with "
               "trainer.precision=..., and drop trainer.plugins.",
}


def _project_flags(t: Mapping) -> None:
    for key, why in PROJECT_OWNED.items():
        if key in t:
            raise ConfigError(f"trainer.{key}={t[key]!r} is not passed on: {why}")
    if t.get("barebones"):
        raise ConfigError("trainer.barebones=true turns off self.log, checkpoints and the progress bar, which every "
                          "run here records its metrics, best epoch and resume point with. Fix: for raw speed use "
                          "the speed mode, data.batches_per_step=8, with logger=none (docs/speed.md).")


def plan(trainer_cfg, impl: str, batches_per_step: int, callbacks_cfg) -> FlagPlan:
    """What the Trainer, the module and the data module each get; ConfigError for what cannot be honoured."""
    t = OmegaConf.to_container(trainer_cfg, resolve=True) if OmegaConf.is_config(trainer_cfg) else dict(trainer_cfg)
    _project_flags(t)
    cbs = OmegaConf.to_container(callbacks_cfg, resolve=True) if OmegaConf.is_config(callbacks_cfg) else \
        dict(callbacks_cfg or {})
    speed = batches_per_step > 1
    out = FlagPlan(module={"batches_per_step": batches_per_step}, by_hand=impl != "nn" or speed)
    if out.by_hand:
        out.module.update(_hand_flags(t, impl, speed))
        out.trainer.update(accumulate_grad_batches=1, gradient_clip_val=None, gradient_clip_algorithm=None)
    if speed:
        bare_steps.check_supported()
        out.data = _speed_flags(t, cbs, batches_per_step)
        if out.data:
            out.trainer["limit_train_batches"] = None  # the loader limits; Lightning would count groups
    return out


def check_trainer(trainer, plan: FlagPlan, impl: str) -> None:
    """After the Trainer exists and before any run: refuse a strategy that wraps the model when stepping by hand."""
    from pytorch_lightning.strategies import DDPStrategy as LightningDDP

    from softmax_lab.trainer.ddp_strategy import DDPStrategy

    strategy = trainer.strategy
    if plan.by_hand and isinstance(strategy, LightningDDP) and not isinstance(strategy, DDPStrategy):
        what = f"impl={impl} (it has no autograd parameters)" if impl != "nn" else \
            "the speed mode (several backward passes per forward)"
        raise ConfigError(f"trainer: {type(strategy).__name__} with {trainer.world_size} process(es) wraps the model "
                          f"in DistributedDataParallel, which cannot train {what}. Fix: trainer=ddp (GPUs) or "
                          "trainer=ddp_cpu, softmax-lab's DDP, which averages the hand-taken steps itself.")
