"""The training split's running loss and accuracy, and the step losses to log, kept on the training device: the one
owner of train/loss, train/acc and train/loss_step.

A read from the device waits for it (a host sync on an accelerator), so nothing here is read per
step: the sums are read once per epoch (`sums`), the step losses once per epoch or checkpoint
(`take_step_losses`); only the progress bar reads `running()` when it refreshes. The sums are float32
whatever the module's precision (they are plain tensors, not buffers a precision plugin casts).
"""

from __future__ import annotations

import torch


class TrainTotals:
    def __init__(self):
        self.loss_sum = self.correct = None
        self.seen = 0
        self.step_losses: list[tuple[int, torch.Tensor]] = []

    def reset(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)  # sum of loss x batch size
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0

    def add(self, loss: torch.Tensor, O: torch.Tensor, y: torch.Tensor) -> None:
        if self.loss_sum is None:
            self.reset(O.device)
        self.loss_sum.add_(loss.detach(), alpha=len(y))
        self.correct.add_(O.detach().argmax(1).eq(y).sum())
        self.seen += len(y)

    def epoch_metrics(self, strategy=None) -> tuple[dict[str, float], float]:
        """The epoch's train loss and accuracy, summed over every process when a DDP `strategy` is given, and the
        number of images they cover: one read of the device (one all-reduce under DDP)."""
        if self.loss_sum is None:
            return {"train/loss": 0.0, "train/acc": 0.0}, 0.0
        sums = torch.stack([self.loss_sum, self.correct.float(), self.loss_sum.new_tensor(float(self.seen))])
        if strategy is not None:
            sums = strategy.reduce(sums, reduce_op="sum")
        loss_sum, correct, n = sums.tolist()
        return {"train/loss": loss_sum / max(n, 1), "train/acc": correct / max(n, 1)}, n

    def running(self) -> dict[str, float]:
        """Loss and accuracy of the epoch so far (reads the device)."""
        if not self.seen:
            return {}
        return {"loss": self.loss_sum.item() / self.seen, "acc": self.correct.item() / self.seen}

    def note_step_loss(self, step: int, loss: torch.Tensor) -> None:
        self.step_losses.append((step, loss.detach()))

    def take_step_losses(self) -> list[tuple[int, float]]:
        """The step losses noted since the last call, read from the device at once."""
        if not self.step_losses:
            return []
        steps, values = zip(*self.step_losses, strict=True)
        self.step_losses = []
        return list(zip(steps, torch.stack([v.float() for v in values]).tolist(), strict=True))


def log_step_losses(loggers, losses: list[tuple[int, float]]) -> None:
    """Each (step, loss) as train/loss_step at its step, to every logger."""
    for step, loss in losses:
        for logger in loggers:
            logger.log_metrics({"train/loss_step": loss}, step=step)
