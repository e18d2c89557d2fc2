"""Read and validate one IDX file (raw or .gz): every fault is a DataError naming the file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from softmax_lab.errors import DataError

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


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found.") from e
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}).") from e
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the name says
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip data ({e}); delete it and install or download it again.") from e
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
