"""What a validation or test pass measures: accuracy, the training loss, and calibration.

Calibration treats softmax(o) as the model's probabilities, whatever loss trained it:
    nll     mean of -log p_y (the cross-entropy of softmax(o))
    ece     expected calibration error, top-label, 15 equal-width confidence bins (0, 1/15], ..., (14/15, 1]:
            sum over bins of (n_b / n) |accuracy_b - mean confidence_b|          (Guo et al., 2017)
    brier   mean over samples of sum_i (p_i - Y_i)^2
    entropy mean of -sum_i p_i log p_i, the model's own uncertainty in nats
Every state is a sum, so one update costs no host sync and DDP reduces them by adding. Counts are
integers and sums float32 on the device (some accelerators have no float64, MPS for one); the means
are taken on the host, in Python floats, once per pass.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

ECE_BINS = 15
SUMS = ("loss_sum", "nll_sum", "brier_sum", "entropy_sum")


def top_label(O: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probabilities, confidence of the predicted class, predicted class) of logits O, in float32 or wider."""
    logp = torch.log_softmax(O if O.dtype in (torch.float32, torch.float64) else O.float(), dim=1)
    conf, pred = logp.max(dim=1)
    return logp, conf.exp(), pred


def confidence_bin(conf: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """The bin of each confidence: b such that conf in (b/bins, (b+1)/bins]."""
    return (torch.ceil(conf * bins).long() - 1).clamp_(0, bins - 1)


class EvalMetrics(Metric):
    """Sums over a split; `compute()` gives the split's numbers (see the module docstring)."""

    full_state_update = False

    def __init__(self, num_classes: int, confusion: bool = False, bins: int = ECE_BINS):
        super().__init__()
        self.num_classes, self.bins, self.with_confusion = num_classes, bins, confusion
        for name in ("n", "correct"):
            self.add_state(name, torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        for name in SUMS:
            self.add_state(name, torch.zeros((), dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("bin_count", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("bin_conf", torch.zeros(bins, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("bin_correct", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")
        if confusion:
            self.add_state("confusion", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, O: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        """O: logits (n, C); y: classes (n,); loss: the training loss's batch mean on these logits."""
        for name in (*SUMS, "bin_conf"):  # precision=bf16-true / 16-true cast the module's states with its weights:
            if getattr(self, name).dtype != torch.float32:  # sums of 10,000 values need float32's 24 bits
                setattr(self, name, getattr(self, name).float())
        logp, conf, pred = top_label(O)
        P = logp.exp()
        hit = pred == y
        n = len(y)
        self.n += n
        self.correct += hit.sum()
        E = P.scatter_add(1, y[:, None], -torch.ones_like(P[:, :1]))  # P - onehot(y)
        batch = {"loss_sum": loss.detach() * n, "nll_sum": -logp.gather(1, y[:, None]).sum(),
                 "brier_sum": (E * E).sum(), "entropy_sum": -(P * logp).sum()}
        for name, value in batch.items():  # in the state's dtype, whatever the module's precision
            state = getattr(self, name)
            state += value.to(state.dtype)
        # fixed-size index_add_ rather than bincount, whose output size depends on the data (a host sync)
        b = confidence_bin(conf, self.bins)
        self.bin_count.index_add_(0, b, torch.ones_like(b))
        self.bin_conf.index_add_(0, b, conf.to(self.bin_conf.dtype))
        self.bin_correct.index_add_(0, b, hit.long())
        if self.with_confusion:
            C = self.num_classes
            self.confusion.view(-1).index_add_(0, y * C + pred, torch.ones_like(y))

    def compute(self) -> dict:
        """Scalars as Python floats; per-bin arrays (and the confusion matrix, per-class accuracy) on the CPU."""
        n = max(int(self.n), 1)
        sums = torch.stack([getattr(self, k).float() for k in SUMS]).tolist()
        count, correct = self.bin_count.cpu().double(), self.bin_correct.cpu().double()
        conf = self.bin_conf.cpu().double()
        out = {}
        if self.with_confusion:
            confusion = self.confusion.cpu()
            out = {"confusion": confusion, "per_class_acc": (confusion.diag().double() / confusion.sum(1).clamp(min=1))
                   .tolist()}
        return {**out, "acc": int(self.correct) / n, **{k.removesuffix("_sum"): s / n for k, s in zip(SUMS, sums)},
                "ece": float((correct - conf).abs().sum()) / n,  # sum over bins of n_b |acc_b - conf_b|, over n
                "bin_count": count, "bin_acc": correct / count.clamp(min=1), "bin_conf": conf / count.clamp(min=1)}
