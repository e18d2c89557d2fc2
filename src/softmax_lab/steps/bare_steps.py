"""Whether the speed mode may take bare steps: the one use of Lightning's private API, and its check.

The speed mode (data.batches_per_step > 1, docs/speed.md) takes several SGD steps per Lightning step.
When no callback listens to Lightning's per-step hooks it takes them bare (torch's backward and step),
because Lightning's wrapper around one step (hook dispatch for every callback, the precision plugin's
closure) costs a large share of the step itself for this model. trainer.global_step must still count
every SGD step: max_steps, checkpoints and the step axis of every metric depend on it, and Lightning
has no public way to add to it. Its manual optimisation loop counts a step with two callables it
injects into the LightningOptimizer while a training step runs (Lightning 2.6:
loops/optimization/manual.py, `_on_before_step` / `_on_after_step`); hand_steps.count_step calls them.

The default mode (data.batches_per_step=1) never comes here: every step goes through Lightning's
public optimizer step. `check_supported` refuses the speed mode, before any run, in one line, when a
one-step probe fit shows that this Lightning no longer counts a bare step that way.
"""

from __future__ import annotations

from functools import cache

import pytorch_lightning as pl
import torch

from softmax_lab.errors import ConfigError
from softmax_lab.steps.hand_steps import count_step

STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_zero_grad", "on_before_optimizer_step")


def step_hooks_in_use(trainer) -> bool:
    """Whether any callback overrides one of Lightning's per-optimizer-step hooks (then no step is taken bare)."""
    return any(getattr(type(cb), h, None) is not getattr(pl.Callback, h) for cb in trainer.callbacks
               for h in STEP_HOOKS)


class _Probe(pl.LightningModule):
    """Manual optimisation, one bare step per training step."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        count_step(self.optimizers())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@cache
def lightning_counts_bare_steps() -> bool:
    """One epoch of three bare steps of a one-parameter module, once per process: does each count exactly once?"""
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    try:
        trainer.fit(_Probe(), train_dataloaders=torch.zeros(3, 1))  # one loader: three batches of one row
    except (AttributeError, TypeError):  # the counters are gone or take other arguments
        return False
    return trainer.global_step == 3


def check_supported() -> None:
    if not lightning_counts_bare_steps():
        raise ConfigError(f"data.batches_per_step>1 (the speed mode) counts its SGD steps through Lightning "
                          f"internals that pytorch-lightning {pl.__version__} no longer has. Fix: "
                          "data.batches_per_step=1, or the pinned versions (make install).")
