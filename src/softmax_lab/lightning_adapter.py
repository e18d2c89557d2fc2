"""The one place that uses Lightning's private API: counting an SGD step taken outside Lightning.

The speed mode (data.batches_per_step > 1, README "Speed") takes several SGD steps per Lightning
step and, when no callback listens to Lightning's per-step hooks, takes them bare (torch's backward
and step), because Lightning's wrapper around one step costs about as much as the step itself for
this model. trainer.global_step must still count every SGD step: max_steps, checkpoints and the
step axis of every metric depend on it, and Lightning has no public way to add to it. Its manual
optimisation loop counts a step with two callables it injects into every LightningOptimizer
(Lightning 2.6: loops/optimization/manual.py, `_on_before_step` / `_on_after_step`); we call them.

tests/test_lightning_adapter.py fails loudly if an upgrade changes them, and `check_supported`
refuses the speed mode in one line instead of counting wrong.
"""

from __future__ import annotations

from pytorch_lightning.core.optimizer import LightningOptimizer

from softmax_lab.errors import ConfigError

_COUNTERS = ("_on_before_step", "_on_after_step")


def check_supported(optimizer: LightningOptimizer) -> None:
    """Refuse the speed mode's bare steps if this Lightning no longer counts steps the way we rely on."""
    if not all(callable(getattr(optimizer, name, None)) for name in _COUNTERS):
        import pytorch_lightning as pl

        raise ConfigError(f"data.batches_per_step>1 (the speed mode) counts SGD steps through Lightning internals "
                          f"that pytorch-lightning {pl.__version__} does not have. Fix: data.batches_per_step=1, "
                          "or the pinned versions (make install).")


def count_optimizer_step(optimizer: LightningOptimizer) -> None:
    """Advance trainer.global_step by one step taken with optimizer.optimizer.step() (or by hand)."""
    optimizer._on_before_step()
    optimizer._on_after_step()
