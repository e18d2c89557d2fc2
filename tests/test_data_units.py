"""Small units of the data part, exactly: a class subset relabelled in the order given, and a download that fails or
finds nothing said in one line (torchvision stood in for: no network here)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from softmax_lab.data import locate
from softmax_lab.data.splits import keep_classes
from softmax_lab.errors import DataError


def test_a_class_subset_keeps_its_images_relabelled_in_the_order_given():
    X = torch.arange(6.0).reshape(6, 1)
    y = torch.tensor([0, 6, 3, 6, 9, 0])
    Xk, yk = keep_classes(X, y, [6, 0])
    assert Xk.flatten().tolist() == [0.0, 1.0, 3.0, 5.0] and yk.tolist() == [1, 0, 0, 1] and yk.dtype == torch.long
    Xk, yk = keep_classes(X, y, [9])
    assert Xk.flatten().tolist() == [4.0] and yk.tolist() == [0]


def fake_torchvision(monkeypatch, download):
    module = types.SimpleNamespace(datasets=types.SimpleNamespace(FashionMNIST=download))
    monkeypatch.setitem(sys.modules, "torchvision", module)


@pytest.mark.parametrize("error", [OSError("no network"), RuntimeError("File not found or corrupted.")])
def test_a_download_that_fails_is_one_line_with_the_remedies(monkeypatch, tmp_path, error):
    def download(root, train, download):
        raise error

    fake_torchvision(monkeypatch, download)
    with pytest.raises(DataError) as e:
        locate._download(tmp_path)
    assert str(e.value).startswith(f"downloading Fashion-MNIST into {tmp_path} failed: {error}. ")
    assert str(e.value).endswith(locate.REMEDIES) and e.value.__cause__ is error


def test_a_download_that_leaves_no_files_says_so(monkeypatch, tmp_path):
    asked = []
    fake_torchvision(monkeypatch, lambda root, train, download: asked.append((root, train, download)))
    with pytest.raises(DataError, match=r"left no IDX files there"):
        locate._download(tmp_path)
    assert asked == [(str(tmp_path), True, True), (str(tmp_path), False, True)]


def test_a_download_says_where_it_goes(monkeypatch, tmp_path, caplog):
    from conftest import write_dataset

    fake_torchvision(monkeypatch, lambda root, train, download: write_dataset(tmp_path / "FashionMNIST" / "raw"))
    with caplog.at_level("INFO", logger="softmax_lab.data.locate"):
        locate._download(tmp_path)
    assert [r.getMessage() for r in caplog.records] == [f"Downloading Fashion-MNIST into {tmp_path}"]


def test_a_download_that_leaves_the_files_returns_them(monkeypatch, tmp_path):
    from conftest import write_dataset

    fake_torchvision(monkeypatch, lambda root, train, download: write_dataset(tmp_path / "FashionMNIST" / "raw"))
    found = locate._download(tmp_path)
    assert sorted(found) == sorted(locate.find_idx_files(tmp_path)) and all(p.exists() for p in found.values())


# --- raw_test_images: the first official test images as the files hold them (predict.py test:N, the model example)

def test_raw_test_images_are_the_files_test_images_over_255(tmp_path):
    from conftest import tiny_split, write_dataset
    from softmax_lab.data.splits import raw_test_images

    X, y = raw_test_images(5, data_dir=write_dataset(tmp_path))
    images, labels = tiny_split(200, 1)  # the test split write_dataset wrote
    assert X.dtype == torch.float32 and y.dtype == torch.long
    torch.testing.assert_close(X, torch.from_numpy(images[:5]).float() / 255, rtol=0, atol=0)
    assert torch.equal(y, torch.from_numpy(labels[:5]).long())


def test_raw_test_images_of_some_classes_are_theirs_relabelled_in_the_order_given(tmp_path):
    from conftest import tiny_split, write_dataset
    from softmax_lab.data.splits import raw_test_images

    X, y = raw_test_images(6, data_dir=write_dataset(tmp_path), classes=[3, 1])
    images, labels = tiny_split(200, 1)
    keep = (labels == 3) | (labels == 1)
    torch.testing.assert_close(X, torch.from_numpy(images[keep][:6]).float() / 255, rtol=0, atol=0)
    assert y.tolist() == [0 if c == 3 else 1 for c in labels[keep][:6]]


def test_raw_test_images_never_download_unless_asked(tmp_path, monkeypatch):
    from softmax_lab.data.splits import raw_test_images

    monkeypatch.setattr(locate, "_download", lambda directory: pytest.fail("downloaded without being asked"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        raw_test_images(1, data_dir=tmp_path / "empty")


def test_a_copy_missing_two_files_names_both(tmp_path):
    from conftest import write_dataset

    d = write_dataset(tmp_path, gz=False)
    (d / "t10k-images-idx3-ubyte").unlink()
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte \(raw or \.gz\)\. "):
        locate.find_idx_files(d)
