"""Units of the core the broader tests reach only through whole trainings: the evaluation hooks' gates (fit or not,
sanity check or not), the metrics' sums across DDP processes (torchmetrics' own sync with a stand-in gather), the
batches' order and shares, the data's refusal word for word, the classifier's defaults."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchmetrics import MaxMetric

from softmax_lab.maths.metrics import EvalMetrics
from softmax_lab.steps.eval_hooks import EvalHooks


def hooks_in(fn: str, sanity: bool):
    """What EvalHooks reads of its LightningModule, in a Trainer doing `fn` (fit, validate), sanity-checking or not."""
    metrics = EvalMetrics(num_classes=3)
    metrics.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 2]), torch.tensor(1.0))
    reads, logged = [], []
    return SimpleNamespace(trainer=SimpleNamespace(state=SimpleNamespace(fn=fn), sanity_checking=sanity),
                           guard=SimpleNamespace(read=lambda: reads.append(1)), reads=reads, val_metrics=metrics,
                           val_acc_best=MaxMetric(), log_dict=lambda metrics, logger: None, logged=logged,
                           log_at_step=logged.append)


@pytest.mark.parametrize(("fn", "sanity", "read"), [("fit", False, 1), ("fit", True, 0), ("validate", False, 0)])
def test_the_divergence_guard_is_read_before_a_fits_validation_only(fn, sanity, read):
    module = hooks_in(fn, sanity)
    EvalHooks.on_validation_epoch_start(module)
    assert len(module.reads) == read


@pytest.mark.parametrize(("fn", "sanity", "best"), [("fit", False, True), ("fit", True, False),
                                                    ("validate", False, False)])
def test_the_best_validation_accuracy_counts_a_fits_epochs_only(fn, sanity, best):
    module = hooks_in(fn, sanity)
    EvalHooks.on_validation_epoch_end(module)
    assert hasattr(module, "last_val") is best
    if best:
        assert module.last_val["val/acc_best"] == 0.5 and module.logged == [module.last_val]
    assert len(module.logged) == (0 if sanity else 1)  # the sanity check's numbers are not the run's


def test_the_metrics_sum_across_processes():
    # torchmetrics' own sync, with a gather that returns this process's states twice (two replicas that saw the same)
    metrics = EvalMetrics(num_classes=3, confusion=True)
    metrics.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 2]), torch.tensor(1.0))
    metrics.sync(dist_sync_fn=lambda state, group=None: [state, state], distributed_available=lambda: True)
    out = EvalMetrics.compute(metrics)  # the plain compute, on the synced states (torchmetrics' own would sync again)
    assert out["acc"] == 0.5 and out["loss"] == 1.0 and int(out["bin_count"].sum()) == 4
    conf = float(torch.softmax(torch.tensor([2.0, 0.0, 0.0]), 0).max())  # both images' confidence: one bin, mean conf
    assert out["confusion"].sum().item() == 4 and out["bin_conf"][out["bin_count"] > 0].tolist() == pytest.approx(
        [conf], rel=1e-6) and out["ece"] == pytest.approx(abs(0.5 - conf), rel=1e-5)


def test_the_confusion_matrix_is_kept_only_when_asked_for():
    metrics = EvalMetrics(num_classes=3)
    metrics.update(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), torch.tensor(1.0))
    assert "confusion" not in metrics.compute()


def batches(**kw):
    from softmax_lab.data.batches import TensorBatches

    X = torch.arange(10, dtype=torch.float32)[:, None]
    return TensorBatches(X, torch.arange(10), batch_size=4, **kw)


def test_an_epochs_order_is_the_permutation_seeded_by_seed_and_epoch():
    # the order a resumed run replays: torch.randperm seeded with seed x 1,000,003 + epoch
    got = batches(shuffle=True, seed=7, epoch=lambda: 2).indices()
    assert got.tolist() == torch.randperm(10, generator=torch.Generator().manual_seed(7 * 1_000_003 + 2)).tolist()


def test_unshuffled_batches_under_ddp_are_every_world_size_th_image():
    for rank in (0, 1):
        got = [y.tolist() for _, y in batches(rank=rank, world_size=2).minibatches()]
        assert got == ([[0, 2, 4, 6], [8]] if rank == 0 else [[1, 3, 5, 7], [9]])


def test_a_directory_without_the_files_is_one_line_with_the_fix(tmp_path):
    from softmax_lab.data.locate import SYSTEM_DIR, locate_fashion_mnist
    from softmax_lab.errors import DataError

    with pytest.raises(DataError) as e:
        locate_fashion_mnist(tmp_path)
    assert str(e.value) == (f"data.data_dir={tmp_path}: no Fashion-MNIST IDX files there (looked in {tmp_path} and "
                            f"{tmp_path / 'FashionMNIST' / 'raw'}). Fix: copy the four files there, add "
                            f"data.download=true, or drop data.data_dir to use ./data or {SYSTEM_DIR}.")


def test_loading_never_downloads_unless_asked(tmp_path, monkeypatch):
    from softmax_lab.data import locate
    from softmax_lab.data.splits import load_fashion_mnist
    from softmax_lab.errors import DataError

    monkeypatch.setattr(locate, "_download", lambda directory: pytest.fail("downloaded without being asked"))
    with pytest.raises(DataError):
        load_fashion_mnist(tmp_path)


def test_a_classifier_takes_raw_pixels_unless_told_the_runs_statistics():
    from softmax_lab.maths.classifier import classifier_of

    torch.manual_seed(0)
    W, b = torch.randn(784, 10), torch.randn(10)
    clf = classifier_of({"net.W": W, "net.b": b}, "scratch", [str(i) for i in range(10)])
    X = torch.rand(3, 784)
    assert (clf.mean, clf.std) == (0.0, 1.0)
    torch.testing.assert_close(clf.probabilities(X), torch.softmax(X @ W + b, 1))
    assert classifier_of({"net.W": W, "net.b": b}, "scratch", list("abcdefghij"), None, 0.5, 0.25).std == 0.25


def test_the_default_seed_is_zero():
    got = batches(shuffle=True).indices()
    assert got.tolist() == torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()


def test_without_a_data_dir_the_search_is_said_in_full_and_a_download_goes_into_data(tmp_path, monkeypatch):
    from softmax_lab.data import locate
    from softmax_lab.errors import DataError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(locate, "SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(DataError) as e:
        locate.locate_fashion_mnist(None)
    assert str(e.value) == (f"Fashion-MNIST not found. Searched: data, data/FashionMNIST/raw, {tmp_path / 'system'}, "
                            f"{tmp_path / 'system' / 'FashionMNIST' / 'raw'}. " + locate.REMEDIES)
    asked = []
    monkeypatch.setattr(locate, "_download", asked.append)
    locate.locate_fashion_mnist(None, download=True)
    assert asked == [Path("data")]
