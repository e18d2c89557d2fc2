"""What the entry points set before a job runs: what a user sees on the console.

Lightning's start-up banners (GPU available, TPU, seed tips) add nothing for this model. Warnings are
filtered by their message, each one named here with the reason it is not the user's to act on; every
other warning shows. Tests set the same filters in pyproject.toml.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, why it is not the user's to act on)
NOT_FOR_USERS = [
    (r".*isinstance\(treespec, LeafSpec\).*", "torch's deprecation, raised inside Lightning's own code"),
    (r".*when logging on epoch level in distributed setting.*",
     "epoch values are reduced across DDP processes by the module itself (steps/train_totals.py, torchmetrics)"),
    (r".*configure_optimizers` returned `None`.*",
     "impl=scratch has no torch optimizer by design: Lightning steps its stand-in (steps/hand_steps.py)"),
]
QUIET_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning_fabric.utilities.seed")


def quiet_console() -> None:
    for message, _why in NOT_FOR_USERS:
        warnings.filterwarnings("ignore", message)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
