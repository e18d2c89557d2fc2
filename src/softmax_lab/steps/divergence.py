"""Stop at the first non-finite loss, say where, and name its likely cause.

On the CPU a loss is checked as it is computed (reading it costs nothing). On an accelerator a read
per SGD step would stall the device queue, so the first non-finite loss is noted on the device and
read every `READ_EVERY` steps and at the end of each epoch: the run stops a few steps later, but
the message still names the first bad step.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from softmax_lab.errors import DivergenceError

READ_EVERY = 8
CURVE = 64  # the last losses kept, so a diverged run's record shows its blow-up


def likely_cause(optimizer: dict, loss: dict, before_any_step: bool) -> str:
    """Advice for a diverged run from its settings: weight decay, the loss's own options, or the rate."""
    lr, wd = optimizer.get("lr"), optimizer.get("weight_decay") or 0.0
    if lr and wd and lr * wd >= 2:  # p <- (1 - lr*wd) p grows on its own once |1 - lr*wd| > 1
        return (f"Likely cause: weight decay. optimizer.weight_decay={wd:g} x optimizer.lr={lr:g} = {lr * wd:g} >= 2, "
                "so every step multiplies the weights by |1 - lr x weight_decay| > 1. "
                f"Try optimizer.weight_decay={0.01 / lr:.2g} or smaller.")
    if before_any_step:
        opts = ", ".join(f"loss.{k}={loss[k]:g}" for k in ("margin", "delta") if isinstance(loss.get(k), int | float))
        return ("Likely cause: the loss's own settings or the data, since it was not finite before the first update"
                + (f" ({opts}: try values near 1)." if opts else "."))
    hint = f"a smaller learning rate than optimizer.lr={lr:g}" if lr else "a smaller learning rate"
    if optimizer.get("momentum"):
        hint += f" (or less momentum than optimizer.momentum={optimizer['momentum']:g})"
    return f"Likely cause: the learning rate. Try {hint}; each loss has its own stable range (docs/science.md)."


class DivergenceGuard:
    """check(loss) at every SGD step; read() where the host may wait (deferred mode only).

    `step_of()` gives the SGD step about to be taken (1-based, the metrics' step axis); it is asked only
    when needed (a divergence, or the deferred mode's note), not at every step. The last CURVE losses are
    kept (on the device in the deferred mode) and handed to `on_divergence([(step, loss), ...])` before the
    DivergenceError is raised: the run's record then holds the blow-up, even before its first logged step."""

    def __init__(self, device: torch.device, advice, step_of, deferred: bool | None = None, on_divergence=None):
        self.deferred = device.type != "cpu" if deferred is None else deferred
        self.advice = advice  # (before_any_step: bool) -> str
        self.step_of = step_of
        self.on_divergence = on_divergence
        self.epoch = 0
        self._noted = torch.tensor([-1.0, 0.0], device=device)  # (first bad step or -1, its loss)
        self._unread = 0
        self._recent: deque[float] = deque(maxlen=CURVE)  # the CPU's losses, as read
        self._ring = torch.full((CURVE,), float("nan"), device=device) if self.deferred else None
        self._ring_steps: deque[int] = deque(maxlen=CURVE)  # the deferred mode's steps of the ring's losses

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._noted.fill_(-1.0)

    def check(self, loss: torch.Tensor) -> None:
        """`loss` is the loss the coming SGD step is about to use."""
        if not self.deferred:
            value = loss.item()  # free on the CPU; cheaper than torch.isfinite
            self._recent.append(value)
            if not math.isfinite(value):
                step = self.step_of()
                self._diverged([(step - len(self._recent) + 1 + i, v) for i, v in enumerate(self._recent)])
                raise DivergenceError(value, self.epoch, step, self.advice(step == 1))
            return
        step = self.step_of()
        self._ring[step % CURVE] = loss.detach().float()  # on the device: no host sync
        self._ring_steps.append(step)
        first = (self._noted[0] < 0) & ~torch.isfinite(loss)  # noted without a host sync
        self._noted[0] = torch.where(first, float(step), self._noted[0])
        self._noted[1] = torch.where(first, loss.detach().float(), self._noted[1])
        self._unread += 1
        if self._unread >= READ_EVERY:
            self.read()

    def read(self) -> None:
        """Deferred mode: raise for the first non-finite loss noted since the epoch started."""
        self._unread = 0
        step, value = self._noted.tolist()
        if step >= 0:
            ring = self._ring.tolist()
            self._diverged([(s, ring[s % CURVE]) for s in self._ring_steps if s <= step])
            raise DivergenceError(value, self.epoch, int(step), self.advice(step == 1))

    def _diverged(self, curve: list[tuple[int, float]]) -> None:
        if self.on_divergence is not None:
            self.on_divergence(curve)
