"""lightning_adapter.py, the one use of Lightning's private API: fails loudly when an upgrade changes it."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from softmax_lab import lightning_adapter
from softmax_lab.errors import ConfigError


class BareSteps(pl.LightningModule):
    """Manual optimisation; each training step takes `per_step` bare SGD steps and counts them."""

    def __init__(self, per_step: int):
        super().__init__()
        self.automatic_optimization = False
        self.net, self.per_step, self.seen = torch.nn.Linear(4, 2), per_step, []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        lightning_adapter.check_supported(opt)
        for _ in range(self.per_step):
            before = self.global_step
            self.net(batch).sum().backward()
            opt.optimizer.step()
            opt.optimizer.zero_grad()
            lightning_adapter.count_optimizer_step(opt)
            self.seen.append(self.global_step - before)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Loader:
    def __init__(self, n):
        self.batches = [torch.rand(5, 4) for _ in range(n)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_each_counted_step_advances_global_step_by_exactly_one():
    module = BareSteps(per_step=3)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=Loader(4))
    assert module.seen == [1] * 24 and trainer.global_step == 24


def test_max_steps_sees_the_counted_steps():
    module = BareSteps(per_step=3)
    trainer = pl.Trainer(accelerator="cpu", max_steps=7, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=Loader(4))
    assert trainer.global_step == 9  # Lightning checks after each Lightning step (the module stops mid-step)


def test_a_lightning_without_the_counters_is_refused_in_one_line():
    class Bare:
        pass

    with pytest.raises(ConfigError, match="data.batches_per_step=1"):
        lightning_adapter.check_supported(Bare())
