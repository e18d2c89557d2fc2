"""Fashion-MNIST: read and validate the IDX files, find them, and serve them from memory.

The whole data set is a few hundred MB of float32, so it lives as one tensor per split on the
training device; a batch is an index slice of a permutation seeded by (seed, epoch). No Dataset,
no collate, no worker processes: an epoch costs what the model costs.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from softmax_lab.errors import DataError

log = logging.getLogger(__name__)

# The textbook's text labels (d2l get_fashion_mnist_labels), index = class id.
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle boot")
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian/Ubuntu: apt-get install dataset-fashion-mnist
REMEDIES = (
    "Fix: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX files in ./data, "
    "or point data.data_dir=/path/to/files at them, or set data.download=true (needs a network)."
)


# ---------------------------------------------------------------------------------------------
# Reading one IDX file


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found.") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}).") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the name says
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip data ({e}); delete it and install or download it again.") from None
    if path.suffix == ".gz":
        raise DataError(f"{path}: not a gzip file although named .gz; delete it and install or download it again.")
    return raw


def read_idx(path: str | Path, expect: int | None = None) -> torch.Tensor:
    """Read an IDX file (raw or .gz) into a uint8 tensor: images (n, 28, 28) or labels (n,).

    `expect` is the magic number the caller needs (2051 images, 2049 labels). Every fault raises
    DataError naming the file and the fault.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 8:
        raise DataError(f"{path}: truncated ({len(data)} bytes, not even an IDX header).")
    magic, n = int.from_bytes(data[0:4], "big"), int.from_bytes(data[4:8], "big")
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC) or (expect is not None and magic != expect):
        want = {IMAGES_MAGIC: "2051 (images)", LABELS_MAGIC: "2049 (labels)"}.get(expect, "2051 or 2049")
        raise DataError(f"{path}: wrong IDX magic number {magic}, expected {want}; not a Fashion-MNIST file.")
    if magic == IMAGES_MAGIC:
        if len(data) < 16:
            raise DataError(f"{path}: truncated image header ({len(data)} bytes).")
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        if (rows, cols) != (28, 28):
            raise DataError(f"{path}: images are {rows}x{cols}, expected 28x28.")
        header, shape = 16, (n, 28, 28)
    else:
        header, shape = 8, (n,)
    size = header + int(np.prod(shape))
    if len(data) != size:
        fault = "truncated" if len(data) < size else "has trailing bytes"
        raise DataError(f"{path}: {fault}: {len(data)} bytes, the header announces {n} items ({size} bytes).")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    if magic == LABELS_MAGIC and n and array.max() > 9:
        i = int(np.argmax(array > 9))
        raise DataError(f"{path}: label {array[i]} at index {i} is out of range 0..9.")
    return torch.from_numpy(array.copy())


def read_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 28, 28) uint8 and labels (n,) int64 of one split, their counts checked."""
    X, y = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
    if len(X) != len(y):
        raise DataError(f"{images_path} holds {len(X)} images but {labels_path} holds {len(y)} labels; "
                        "the two files must come from the same release.")
    return X, y.long()


# ---------------------------------------------------------------------------------------------
# Finding the four files


def find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The four files in `directory` or its torchvision layout `FashionMNIST/raw/`, raw or .gz.

    None when none is there; DataError when only some are (a partial copy is a fault, not a miss).
    """
    found, missing = {}, []
    for key, name in FILES.items():
        candidates = [d / (name + ext) for d in (directory, directory / "FashionMNIST" / "raw") for ext in ("", ".gz")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found[key] = hit
    if not found:
        return None
    if missing:
        raise DataError(f"{directory}: Fashion-MNIST is incomplete, missing {', '.join(missing)} (raw or .gz). "
                        + REMEDIES)
    return found


def _download(directory: Path) -> dict[str, Path]:
    import torchvision  # only here: its import costs a second

    log.info("Downloading Fashion-MNIST into %s", directory)
    try:
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(directory), train=train, download=True)
    except Exception as e:  # network errors come in many types (URLError, RuntimeError, OSError)
        raise DataError(f"downloading Fashion-MNIST into {directory} failed: {e}. " + REMEDIES) from None
    found = find_idx_files(directory)
    if found is None:
        raise DataError(f"downloading Fashion-MNIST into {directory} left no IDX files there. " + REMEDIES)
    return found


def locate_fashion_mnist(data_dir: str | Path | None = None, download: bool = False) -> dict[str, Path]:
    """Paths of the four IDX files.

    data_dir set: there and only there (downloading into it when `download`). Unset: ./data, then
    the Debian package's directory, then a download into ./data when `download`.
    """
    if data_dir is not None:
        directory = Path(data_dir).expanduser()
        found = find_idx_files(directory)
        if found is not None:
            return found
        if download:
            return _download(directory)
        raise DataError(f"data.data_dir={data_dir}: no Fashion-MNIST IDX files there (looked in {directory} and "
                        f"{directory / 'FashionMNIST' / 'raw'}). Fix: copy the four files there, add "
                        "data.download=true, or drop data.data_dir to use ./data or " + str(SYSTEM_DIR) + ".")
    searched = [Path("data"), SYSTEM_DIR]
    for directory in searched:
        found = find_idx_files(directory)
        if found is not None:
            return found
    if download:
        return _download(Path("data"))
    places = ", ".join(f"{d}, {d / 'FashionMNIST' / 'raw'}" for d in searched)
    raise DataError(f"Fashion-MNIST not found. Searched: {places}. " + REMEDIES)


@lru_cache(maxsize=2)
def _read_all(paths: tuple[tuple[str, Path], ...], mtimes: tuple[float, ...]):
    # Cached per process so a sweep reads and validates the files once; mtimes invalidate it.
    p = dict(paths)
    return read_split(p["train_images"], p["train_labels"]), read_split(p["test_images"], p["test_labels"])


def load_fashion_mnist(data_dir=None, download=False):
    """((train_X, train_y), (test_X, test_y)) as uint8 images and int64 labels, validated."""
    paths = locate_fashion_mnist(data_dir, download)
    ordered = tuple(sorted(paths.items()))
    return _read_all(ordered, tuple(p.stat().st_mtime for _, p in ordered))


@lru_cache(maxsize=1)
def _prepare_splits(paths, mtimes, val_size, split_seed, normalize, resize, classes):
    """(splits, mean, std): train/val from the official training set by a seeded split, the official test set;
    pixels as float32 in [0, 1] (as ToTensor), optionally resized and standardised, flattened."""
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
            X, y = _keep_classes(X, y, classes)
        splits[name] = (_pixels(X, resize), y)
    mean, std = 0.0, 1.0
    if normalize:  # standardise with the training split's statistics, as transforms.Normalize would
        mean, std = splits["train"][0].mean().item(), splits["train"][0].std().item()
        splits = {name: ((X - mean) / std, y) for name, (X, y) in splits.items()}
    return tuple(splits.items()), mean, std


def _keep_classes(X, y, classes):
    keep = torch.isin(y, torch.tensor(classes))
    relabel = torch.full((10,), -1, dtype=torch.long)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    return X[keep], relabel[y[keep]]


def _pixels(X: torch.Tensor, resize: int | None) -> torch.Tensor:
    """uint8 (n, 28, 28) -> float32 (n, side*side) in [0, 1], as ToTensor (and Resize) would."""
    return resize_pixels(X.float().div_(255), resize)


def resize_pixels(X: torch.Tensor, resize: int | None) -> torch.Tensor:
    """float (n, 28, 28) in [0, 1] -> (n, side*side), bilinearly resized with antialiasing when `resize` is set."""
    if resize:
        import torch.nn.functional as F

        X = torch.cat([F.interpolate(c.unsqueeze(1), size=(resize, resize), mode="bilinear", antialias=True,
                                     align_corners=False).clamp_(0, 1)
                       for c in X.split(4096)])
    return X.reshape(len(X), -1)


def prepare_pixels(X: torch.Tensor, resize: int | None, mean: float, std: float) -> torch.Tensor:
    """Pixels in [0, 1] (n, 28, 28) or (n, 784) -> the model's inputs, as training prepared them."""
    return (resize_pixels(X.reshape(len(X), 28, 28).float(), resize) - mean) / std


# ---------------------------------------------------------------------------------------------
# Serving batches


class TensorBatches:
    """Batches of (X, y) sliced from whole tensors, in a permutation that depends only on (seed, epoch).

    `epoch` is a callable read when an epoch's iteration starts (the data module passes the trainer's
    current epoch), so a resumed run replays exactly the batches it would have seen. Under DDP each process
    takes a disjoint, equal share (every world_size-th index) of the epoch's permutation. The last partial
    batch is kept.

    `limit` caps the minibatches of an epoch (an int, or a fraction as Lightning computes it). With
    `group=K` (the speed mode, README 'Speed') it yields lists of K minibatches, the last list possibly
    shorter: the module takes one SGD step per minibatch, and Lightning's per-step machinery, which costs
    about as much as a minibatch of this model, runs once per K.
    """

    def __init__(self, X, y, batch_size, shuffle=False, seed=0, rank=0, world_size=1, group=None, limit=None,
                 epoch=lambda: 0):
        self.X, self.y, self.batch_size, self.group = X, y, batch_size, group
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.limit, self.epoch = limit, epoch

    def indices(self) -> torch.Tensor:
        n = len(self.X)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch())
            order = torch.randperm(n, generator=g)
            if self.world_size > 1:  # equal shares so every replica takes the same number of steps
                order = order[: n - n % self.world_size]
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size].to(self.X.device)

    @property
    def num_minibatches(self) -> int:
        n, world = len(self.X), self.world_size
        share = (n - n % world) // world if self.shuffle else -(-(n - self.rank) // world)
        full = -(-share // self.batch_size)
        if self.limit is None:
            return full
        return min(full, self.limit) if isinstance(self.limit, int) else int(full * self.limit)  # as Lightning

    def __len__(self) -> int:
        return -(-self.num_minibatches // self.group) if self.group else self.num_minibatches

    def minibatches(self):
        count, size = self.num_minibatches, self.batch_size
        if not self.shuffle and self.world_size == 1:  # contiguous views, no copy
            for i in range(count):
                yield self.X[i * size : (i + 1) * size], self.y[i * size : (i + 1) * size]
            return
        idx = self.indices()
        for i in range(count):  # index_select: 3x faster than X[j] for 256 rows of 784 on the CPU (measured)
            j = idx[i * size : (i + 1) * size]
            yield torch.index_select(self.X, 0, j), torch.index_select(self.y, 0, j)

    def __iter__(self):
        if not self.group:
            yield from self.minibatches()
            return
        chunk = []
        for b in self.minibatches():
            chunk.append(b)
            if len(chunk) == self.group:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


class FashionMNISTDataModule(pl.LightningDataModule):
    """Fashion-MNIST as in-memory tensors: train/val split from the official 60k, the official 10k test.

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
        self.train_limit = train_limit  # the speed mode's limit_train_batches, in minibatches (trainer_flags.py)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.mean, self.std = 0.0, 1.0
        self.located_dir: Path | None = None  # where the files were found (a run's tag)

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
        """Build the three splits as flat float tensors on the CPU (idempotent).

        The tensors are shared, read-only, by every data module of the process with the same settings:
        the jobs of a sweep prepare the data once and hold one copy.
        """
        if self.splits:
            return
        paths = locate_fashion_mnist(self.data_dir, self.download)
        self.located_dir = paths["train_images"].parent
        ordered = tuple(sorted(paths.items()))
        splits, self.mean, self.std = _prepare_splits(
            ordered, tuple(p.stat().st_mtime for _, p in ordered), self.val_size, self.split_seed,
            self.normalize, self.resize, tuple(self.classes) if self.classes else None)
        self.splits = dict(splits)

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

    def train_dataloader(self):
        """Minibatches in a (seed, epoch) permutation; in the speed mode, lists of `batches_per_step` of them.

        With trainer.overfit_batches the order is fixed, as Lightning makes it for a DataLoader.
        """
        trainer = self.trainer
        shuffle = trainer is None or not trainer.overfit_batches
        epoch = (lambda: trainer.current_epoch) if trainer is not None else (lambda: 0)
        group = self.batches_per_step if self.batches_per_step > 1 else None
        return self._batches("train", self.batch_size, shuffle=shuffle, group=group, limit=self.train_limit,
                             epoch=epoch)

    def val_dataloader(self):
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return self._batches("test", self.eval_batch_size, shuffle=False)

    def state_dict(self) -> dict:
        """Saved in checkpoints: the training split's pixel statistics, so a checkpoint alone prepares images."""
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.std = state.get("mean", self.mean), state.get("std", self.std)

    def raw_test_images(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n official test images (of data.classes) as the files hold them: (n, 28, 28) in [0, 1]."""
        _, (X, y) = load_fashion_mnist(self.data_dir, self.download)
        if self.classes:
            X, y = _keep_classes(X, y.long(), self.classes)
        return X[:n].float() / 255, y[:n].long()

    def images(self, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n images of a split as (n, side, side) in [0, 1] for pictures, with labels."""
        X, y = self.splits[split]
        X = X[:n].float().cpu() * self.std + self.mean
        return X.reshape(-1, self.side, self.side), y[:n].cpu()
