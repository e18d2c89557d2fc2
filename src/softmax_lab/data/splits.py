"""The splits: train/val from the official 60k by a seeded permutation, the official 10k test; pixels prepared.

Both reading and preparing are cached per process (the file's mtime invalidates), so the jobs of a
sweep read, validate and prepare the data once and share one read-only copy.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from softmax_lab.data.idx import read_split
from softmax_lab.data.locate import locate_fashion_mnist
from softmax_lab.errors import DataError
from softmax_lab.maths.pixels import resize_pixels

Split = tuple[torch.Tensor, torch.Tensor]


def _stamp(paths: dict[str, Path]) -> tuple:
    ordered = tuple(sorted(paths.items()))
    return ordered, tuple(p.stat().st_mtime for _, p in ordered)


@lru_cache(maxsize=2)
def _read_all(paths: tuple[tuple[str, Path], ...], mtimes: tuple[float, ...]) -> tuple[Split, Split]:
    p = dict(paths)
    return read_split(p["train_images"], p["train_labels"]), read_split(p["test_images"], p["test_labels"])


def load_fashion_mnist(data_dir=None, download=False) -> tuple[Split, Split]:
    """((train_X, train_y), (test_X, test_y)) as uint8 images and int64 labels, validated."""
    return _read_all(*_stamp(locate_fashion_mnist(data_dir, download)))


def keep_classes(X: torch.Tensor, y: torch.Tensor, classes) -> Split:
    """The images of `classes` only, relabelled 0..k-1 in the order given."""
    keep = torch.isin(y, torch.tensor(classes))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    return X[keep], relabel[y[keep]]


def prepare_splits(paths: dict[str, Path], val_size: int, split_seed: int, normalize: bool, resize: int | None,
                   classes: tuple[int, ...] | None) -> tuple[dict[str, Split], float, float]:
    """(splits, mean, std): flat float32 pixels in [0, 1] (as ToTensor), resized and standardised as asked."""
    splits, mean, std = _prepare(*_stamp(paths), val_size, split_seed, normalize, resize, classes)
    return dict(splits), mean, std


@lru_cache(maxsize=1)
def _prepare(paths, mtimes, val_size, split_seed, normalize, resize, classes):
    (train_X, train_y), (test_X, test_y) = _read_all(paths, mtimes)
    if val_size >= len(train_X):
        raise DataError(f"data.val_size={val_size} leaves no training images: the training set has {len(train_X)}. "
                        f"Fix: a data.val_size below {len(train_X)}.")
    perm = torch.randperm(len(train_X), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    raw = {"train": (train_X[train_idx], train_y[train_idx]), "val": (train_X[val_idx], train_y[val_idx]),
           "test": (test_X, test_y)}
    splits = {}
    for name, (X, y) in raw.items():
        if classes:
            X, y = keep_classes(X, y, classes)
        splits[name] = (resize_pixels(X.float().div_(255), resize), y)
    mean, std = 0.0, 1.0
    if normalize:  # standardise with the training split's statistics, as transforms.Normalize would
        mean, std = splits["train"][0].mean().item(), splits["train"][0].std().item()
        splits = {name: ((X - mean) / std, y) for name, (X, y) in splits.items()}
    return tuple(splits.items()), mean, std


def raw_test_images(n: int, data_dir=None, download=False, classes=None) -> Split:
    """The first n official test images (of `classes`) as the files hold them: (n, 28, 28) in [0, 1], labels."""
    _, (X, y) = load_fashion_mnist(data_dir, download)
    if classes:
        X, y = keep_classes(X, y.long(), classes)
    return X[:n].float() / 255, y[:n].long()
