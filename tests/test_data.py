"""IDX reading and validation, locating the files, and the in-memory data module."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from conftest import idx_bytes, tiny_split, write_dataset, write_idx
from softmax_lab.data import locate as locate_mod
from softmax_lab.data.batches import TensorBatches
from softmax_lab.data.datamodule import FashionMNISTDataModule
from softmax_lab.data.idx import read_idx, read_split
from softmax_lab.data.locate import locate_fashion_mnist
from softmax_lab.data.splits import load_fashion_mnist
from softmax_lab.errors import DataError

# ------------------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("ext", ["", ".gz"])
def test_read_idx_round_trips_images_and_labels(tmp_path, ext):
    X, y = tiny_split(30, 0)
    images = read_idx(write_idx(tmp_path / f"img{ext}", X, 2051))
    labels = read_idx(write_idx(tmp_path / f"lab{ext}", y, 2049))
    assert images.dtype == torch.uint8 and images.shape == (30, 28, 28)
    assert torch.equal(images, torch.from_numpy(X)) and torch.equal(labels, torch.from_numpy(y))


def test_gzip_detected_by_content_not_name(tmp_path):
    X, _ = tiny_split(5, 0)
    p = tmp_path / "images-idx3-ubyte"  # gzip data under a raw name
    p.write_bytes(gzip.compress(idx_bytes(X, 2051)))
    assert read_idx(p).shape == (5, 28, 28)


def _write_raw(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("case, make, message", [
    ("missing", lambda d: d / "nope-idx3-ubyte", "file not found"),
    ("empty", lambda d: _write_raw(d, "e", b""), "truncated"),
    ("truncated images", lambda d: _write_raw(d, "t", idx_bytes(tiny_split(4, 0)[0], 2051)[:-100]), "truncated"),
    ("truncated labels", lambda d: _write_raw(d, "l", idx_bytes(tiny_split(4, 0)[1], 2049)[:-1]), "truncated"),
    ("trailing bytes", lambda d: _write_raw(d, "x", idx_bytes(tiny_split(4, 0)[1], 2049) + b"\0"), "trailing bytes"),
    ("wrong magic", lambda d: _write_raw(d, "m", b"\0\0\x08\x04" + bytes(12)), "wrong IDX magic number 2052"),
    ("wrong dims", lambda d: _write_raw(d, "d", idx_bytes(np.zeros((2, 32, 32)), 2051)), "32x32, expected 28x28"),
    ("bad label", lambda d: _write_raw(d, "b", idx_bytes(np.array([1, 2, 12]), 2049)), "label 12 at index 2"),
    ("not gzip", lambda d: _write_raw(d, "n.gz", b"plain text, not gzip"), "not a gzip file"),
    ("corrupt gzip", lambda d: _write_raw(d, "c.gz", gzip.compress(idx_bytes(tiny_split(50, 0)[0], 2051))[:2000]),
     "corrupt gzip"),
])
def test_every_fault_names_the_file_and_the_fault(tmp_path, case, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError) as e:
        read_idx(path)
    assert str(path) in str(e.value) and message in str(e.value), case


def test_read_idx_refuses_labels_where_images_are_expected(tmp_path):
    p = write_idx(tmp_path / "lab", tiny_split(4, 0)[1], 2049)
    with pytest.raises(DataError, match="expected 2051"):
        read_idx(p, expect=2051)


def test_image_and_label_counts_must_agree(tmp_path):
    X, y = tiny_split(10, 0)
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        read_split(write_idx(tmp_path / "i", X, 2051), write_idx(tmp_path / "l", y[:9], 2049))


# ------------------------------------------------------------------------------------------------
# Locating the files


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_data_dir_in_either_layout_and_compression(tmp_path, gz, layout):
    write_dataset(tmp_path, 50, 20, gz=gz, layout=layout)
    paths = locate_fashion_mnist(tmp_path)
    assert set(paths) == {"train_images", "train_labels", "test_images", "test_labels"}
    assert all(p.name.endswith(".gz") == gz for p in paths.values())
    (Xtr, ytr), (Xte, yte) = load_fashion_mnist(tmp_path)
    assert Xtr.shape == (50, 28, 28) and yte.dtype == torch.int64


def test_data_dir_is_authoritative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "data", 20, 10)  # ./data exists, but data_dir points elsewhere
    with pytest.raises(DataError) as e:
        locate_fashion_mnist(tmp_path / "empty")
    assert "data.data_dir=" in str(e.value) and "data.download=true" in str(e.value)


def test_incomplete_directory_lists_the_missing_files(tmp_path):
    write_dataset(tmp_path, 20, 10)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        locate_fashion_mnist(tmp_path)


def test_unset_data_dir_searches_dot_data_then_system_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(locate_mod, "SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(DataError) as e:
        locate_fashion_mnist()
    msg = str(e.value)
    assert "data" in msg and str(tmp_path / "system") in msg and "apt-get install dataset-fashion-mnist" in msg
    write_dataset(tmp_path / "system", 20, 10)
    assert locate_fashion_mnist()["train_images"].parent == tmp_path / "system"
    write_dataset(tmp_path / "data", 20, 10, gz=False)
    assert locate_fashion_mnist()["train_images"].resolve().parent == (tmp_path / "data").resolve()


class FakeTorchvisionFashionMNIST:
    """Stands in for torchvision's downloader (no network here): writes the raw files where it would."""

    calls = []

    def __init__(self, root, train=True, download=False):
        FakeTorchvisionFashionMNIST.calls.append((root, train, download))
        write_dataset(__import__("pathlib").Path(root), 30, 10, gz=False, layout="torchvision")


def test_download_into_data_dir_uses_torchvision(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeTorchvisionFashionMNIST)
    paths = locate_fashion_mnist(tmp_path / "dl", download=True)
    assert paths["train_images"] == tmp_path / "dl" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    assert FakeTorchvisionFashionMNIST.calls[-1][2] is True


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="downloading Fashion-MNIST into .* failed"):
        locate_fashion_mnist(tmp_path / "dl", download=True)


# ------------------------------------------------------------------------------------------------
# The data module and its batches


def test_split_sizes_types_and_ranges(tiny_data):
    dm = FashionMNISTDataModule(data_dir=str(tiny_data), val_size=100, batch_size=64)
    dm.setup("fit")
    sizes = {k: len(v[0]) for k, v in dm.splits.items()}
    assert sizes == {"train": 500, "val": 100, "test": 200}
    X, y = next(iter(dm.train_dataloader()))  # one minibatch per Lightning step by default
    assert X.shape == (64, 784) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= X.min() and X.max() <= 1.0 and X.max() > 0.5
    assert dm.num_inputs == 784 and dm.num_classes == 10 and dm.class_names[9] == "ankle boot"


def test_split_is_seeded_and_disjoint(tiny_data):
    def split(seed):
        dm = FashionMNISTDataModule(data_dir=str(tiny_data), val_size=100, split_seed=seed)
        dm.load()
        return dm.splits

    a, b, c = split(0), split(0), split(1)
    assert torch.equal(a["val"][0], b["val"][0]) and not torch.equal(a["val"][0], c["val"][0])
    rows = {tuple(r.tolist()) for r in torch.cat([a["train"][0], a["val"][0]])}
    assert len(rows) == 600  # every training image exactly once


def test_last_partial_batch_is_kept_and_every_sample_served():
    X, y = torch.arange(10.0)[:, None], torch.arange(10)
    batches = list(TensorBatches(X, y, 4, shuffle=True, seed=3))
    assert [len(b[1]) for b in batches] == [4, 4, 2] and len(TensorBatches(X, y, 4)) == 3
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))


def test_batch_order_depends_only_on_seed_and_epoch():
    X, y = torch.arange(100.0)[:, None], torch.arange(100)

    def order(seed, epoch):
        return torch.cat([b[1] for b in TensorBatches(X, y, 16, shuffle=True, seed=seed, epoch=lambda: epoch)])

    assert torch.equal(order(1, 3), order(1, 3))
    assert not torch.equal(order(1, 3), order(1, 4)) and not torch.equal(order(1, 3), order(2, 3))


def test_groups_of_minibatches_cover_the_epoch_in_order():
    X, y = torch.arange(100.0)[:, None], torch.arange(100)
    flat = TensorBatches(X, y, 8, shuffle=True, seed=5)
    grouped = TensorBatches(X, y, 8, shuffle=True, seed=5, group=3)
    groups = list(grouped)
    assert [len(g) for g in groups] == [3, 3, 3, 3, 1] and len(grouped) == 5 and grouped.num_minibatches == 13
    assert all(torch.equal(a[1], b[1]) for a, b in zip([b for g in groups for b in g], flat, strict=True))


@pytest.mark.parametrize("limit, expected", [(5, 5), (100, 13), (0.5, 6), (0.0, 0), (1.0, 13)])
def test_a_limit_counts_minibatches_as_lightning_counts_batches(limit, expected):
    X, y = torch.arange(100.0)[:, None], torch.arange(100)
    tb = TensorBatches(X, y, 8, shuffle=True, seed=5, limit=limit, group=3)  # 13 minibatches in full
    assert tb.num_minibatches == expected == sum(len(g) for g in tb) and len(tb) == -(-expected // 3)


def test_ddp_shares_are_disjoint_and_equal():
    X, y = torch.arange(101.0)[:, None], torch.arange(101)
    shares = [torch.cat([b[1] for b in TensorBatches(X, y, 8, shuffle=True, seed=0, rank=r, world_size=2)])
              for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 50
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    assert len(TensorBatches(X, y, 8, shuffle=True, rank=1, world_size=2)) == 7


def test_classes_subset_is_relabelled(tiny_data):
    dm = FashionMNISTDataModule(data_dir=str(tiny_data), val_size=100, classes=[6, 0])
    dm.load()
    y = dm.splits["test"][1]
    assert set(y.tolist()) == {0, 1} and dm.num_classes == 2 and dm.class_names == ["shirt", "t-shirt"]
    assert len(y) == 40


def test_normalize_and_resize(tiny_data):
    dm = FashionMNISTDataModule(data_dir=str(tiny_data), val_size=100, normalize=True, resize=64)
    dm.load()
    Xtr = dm.splits["train"][0]
    assert Xtr.shape == (500, 64 * 64) and dm.num_inputs == 4096
    assert abs(Xtr.mean().item()) < 1e-4 and abs(Xtr.std().item() - 1) < 1e-3
    images, _ = dm.images("test", 3)
    assert images.shape == (3, 64, 64) and images.min() >= -1e-5 and images.max() <= 1 + 1e-5


def test_batches_live_on_the_training_device(tiny_data):
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(784, 10))
            self.devices = set()

        def training_step(self, batch, i):
            X, _ = batch
            self.devices.add((X.device.type, X.data_ptr() != 0))
            return (X @ self.w).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = FashionMNISTDataModule(data_dir=str(tiny_data), val_size=100)
    trainer = pl.Trainer(accelerator="cpu", fast_dev_run=2, logger=False, enable_progress_bar=False)
    probe = Probe()
    trainer.fit(probe, datamodule=dm)
    assert probe.devices == {("cpu", True)} and dm.splits["train"][0].device.type == "cpu"


# ------------------------------------------------------------------------------------------------
# The real data set


@pytest.mark.real_data
def test_real_files_have_the_official_shape(real_data):
    (Xtr, ytr), (Xte, yte) = load_fashion_mnist(real_data)
    assert Xtr.shape == (60000, 28, 28) and Xte.shape == (10000, 28, 28)
    assert torch.bincount(ytr).tolist() == [6000] * 10 and torch.bincount(yte).tolist() == [1000] * 10
    assert Xtr.min() == 0 and Xtr.max() == 255


@pytest.mark.real_data
def test_real_split_and_batches(real_data):
    dm = FashionMNISTDataModule(data_dir=str(real_data))
    dm.setup("fit")
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [55000, 5000, 10000]
    X, y = next(iter(dm.train_dataloader()))
    assert X.shape == (256, 784) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert X.min() >= 0 and X.max() <= 1
    loader = dm.train_dataloader()
    assert loader.num_minibatches == len(loader) == 215  # 214 full batches, the last partial
    assert len(list(loader)[-1][1]) == 55000 - 214 * 256
    speed = FashionMNISTDataModule(data_dir=str(real_data), batches_per_step=8)
    speed.setup("fit")
    assert len(speed.train_dataloader()) == 27  # groups of 8 minibatches in the speed mode


def test_val_size_must_leave_training_images(tiny_data):
    dm = FashionMNISTDataModule(data_dir=str(tiny_data), val_size=600)
    with pytest.raises(DataError, match="data.val_size=600 leaves no training images: the training set has 600"):
        dm.load()


def test_pixels_are_the_files_bytes_over_255_exactly(tiny_data):
    """As torchvision's ToTensor: 255 is 1.0 and every value byte/255 (not /256, not rounded)."""
    from softmax_lab.data.idx import read_idx

    dm = FashionMNISTDataModule(data_dir=str(tiny_data), val_size=100)
    dm.setup("test")
    raw = read_idx(tiny_data / "t10k-images-idx3-ubyte.gz", 2051)
    X, _ = dm.splits["test"]
    assert torch.equal(X.reshape(raw.shape), raw.float() / 255)
