"""FashionMNISTDataModule: the three splits as tensors on the training device, served as TensorBatches."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from softmax_lab.data.batches import TensorBatches
from softmax_lab.data.idx import CLASS_NAMES
from softmax_lab.data.locate import locate_fashion_mnist
from softmax_lab.data.splits import load_fashion_mnist, prepare_splits, raw_test_images


class FashionMNISTDataModule(pl.LightningDataModule):
    """Fashion-MNIST as in-memory tensors: train/val split from the official 60k, the official 10k test.

    `batches_per_step` (data.batches_per_step) is how many minibatches one Lightning step carries: 1 by
    default; more is the speed mode (docs/speed.md), where the train loader yields lists of minibatches.

    >>> dm = FashionMNISTDataModule(batch_size=256)  # doctest: +SKIP
    >>> dm.setup("fit"); X, y = next(iter(dm.train_dataloader()))  # doctest: +SKIP
    >>> X.shape, X.dtype, y.dtype  # doctest: +SKIP
    (torch.Size([256, 784]), torch.float32, torch.int64)
    """

    def __init__(self, data_dir: str | None = None, download: bool = False, batch_size: int = 256,
                 val_size: int = 5000, normalize: bool = False, resize: int | None = None,
                 classes: list[int] | None = None, split_seed: int = 0, shuffle_seed: int = 0,
                 eval_batch_size: int = 2048, batches_per_step: int = 1, train_limit: int | float | None = None):
        super().__init__()
        # Saved in checkpoints (plain values), so eval.py prepares the data exactly as in training.
        self.save_hyperparameters(logger=False, ignore=["train_limit"])
        self.data_dir, self.download = data_dir, download
        self.batch_size, self.eval_batch_size, self.val_size = batch_size, eval_batch_size, val_size
        self.normalize, self.resize = normalize, resize
        self.classes = list(classes) if classes is not None else None
        self.split_seed, self.shuffle_seed = split_seed, shuffle_seed
        self.batches_per_step = batches_per_step
        self.train_limit = train_limit  # the speed mode's limit_train_batches, in minibatches (trainer/flags.py)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mean, self.std = 0.0, 1.0
        self.located_dir: Path | None = None  # where the files were found (a run's tag)
        self.located_files: dict[str, Path] = {}  # the four IDX files (the run's dataset inputs)

    @property
    def side(self) -> int:
        return self.resize or 28

    @property
    def num_inputs(self) -> int:
        return self.side**2

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else 10

    @property
    def class_names(self) -> list[str]:
        return [CLASS_NAMES[c] for c in self.classes] if self.classes else list(CLASS_NAMES)

    def prepare_data(self) -> None:
        load_fashion_mnist(self.data_dir, self.download)  # locate, download if asked, validate

    def load(self) -> None:
        """Build the three splits as flat float tensors on the CPU (idempotent; shared within the process)."""
        if self.splits:
            return
        paths = locate_fashion_mnist(self.data_dir, self.download)
        self.located_dir, self.located_files = paths["train_images"].parent, dict(paths)
        self.splits, self.mean, self.std = prepare_splits(paths, self.val_size, self.split_seed, self.normalize,
                                                          self.resize, tuple(self.classes) if self.classes else None)

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for name, (X, y) in self.splits.items():
            if X.device != device:
                self.splits[name] = (X.to(device), y.to(device))

    def _batches(self, split: str, batch_size: int, shuffle: bool, **kwargs) -> TensorBatches:
        X, y = self.splits[split]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return TensorBatches(X, y, batch_size, shuffle=shuffle, seed=self.shuffle_seed, rank=rank, world_size=world,
                             **kwargs)

    def train_dataloader(self) -> TensorBatches:
        """Minibatches in a (seed, epoch) permutation; in the speed mode, lists of `batches_per_step` of them.

        With trainer.overfit_batches the order is fixed, as Lightning makes it for a DataLoader.
        """
        trainer = self.trainer
        shuffle = trainer is None or not trainer.overfit_batches
        epoch = (lambda: trainer.current_epoch) if trainer is not None else (lambda: 0)
        group = self.batches_per_step if self.batches_per_step > 1 else None
        return self._batches("train", self.batch_size, shuffle=shuffle, group=group, limit=self.train_limit,
                             epoch=epoch)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", self.eval_batch_size, shuffle=False)

    def state_dict(self) -> dict:
        """Saved in checkpoints: the training split's pixel statistics, so a checkpoint alone prepares images."""
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = state.get("mean", self.mean), state.get("std", self.std)

    def raw_test_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n official test images (of data.classes) as the files hold them: (n, 28, 28) in [0, 1]."""
        return raw_test_images(n, self.data_dir, self.download, self.classes)

    def images(self, split: str, n: int, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n images of a split (or those at `index`) as (n, side, side) in [0, 1] for pictures, with
        labels."""
        X, y = self.splits[split]
        X, y = (X[:n], y[:n]) if index is None else (X[index.to(X.device)], y[index.to(y.device)])
        X = X.float().cpu() * self.std + self.mean
        return X.reshape(-1, self.side, self.side), y.cpu()
