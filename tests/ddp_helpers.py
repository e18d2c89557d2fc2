"""Callbacks that only tests need, importable by the DDP processes (the tests put this folder on PYTHONPATH)."""

from __future__ import annotations

import time

from softmax_lab.trainer.callbacks import SaveInitialCheckpoint


class LateRankOneInitialCheckpoint(SaveInitialCheckpoint):
    """Rank 1 reaches the initial save seconds after rank 0 has written last.ckpt, as on a loaded machine:
    every rank must still take the same (collective) branch, or the processes wait on each other forever."""

    def on_train_start(self, trainer, pl_module):
        if trainer.global_rank == 1:
            time.sleep(2)
        super().on_train_start(trainer, pl_module)
