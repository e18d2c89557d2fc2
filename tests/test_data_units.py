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
