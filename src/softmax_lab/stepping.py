"""SGD steps the module takes itself, under Lightning's manual optimisation.

impl=scratch always steps here (no autograd, no torch.optim); impl=nn steps here only in the speed
mode (data.batches_per_step > 1): by default Lightning's automatic optimisation steps it. Each
step repeats what Lightning's automatic optimisation does, in its order, so a flag means the same
in every mode (trainer_flags.py moves those flags here):

    loss / accumulate_grad_batches -> gradients, summed over a window of minibatches
    at the window's last minibatch, or the epoch's: DDP average -> divergence check -> clipping
    (torch.nn.utils' norm or value rule) -> update -> trainer.global_step + 1

A step goes through Lightning's optimizer (`opt.step()`, `manual_backward`), so its hooks and
precision plugin run, except when no callback listens to those hooks: then it is taken bare and
counted through lightning_adapter.py (Lightning's own counting, profiler included), which nobody
can tell apart and which costs a fraction of the wrapper. precision=16-mixed, whose loss scaling
needs the wrapper, is refused here (trainer_flags.py).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from softmax_lab import lightning_adapter
from softmax_lab.distributed import average_loss_and_grads

STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_zero_grad", "on_before_optimizer_step")


def window_mean(losses: list[torch.Tensor]) -> torch.Tensor:
    """The loss of an accumulation window: its minibatches' mean (no stacking for the usual window of one)."""
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def step_hooks_in_use(trainer) -> bool:
    """Whether any callback overrides one of Lightning's per-optimizer-step hooks."""
    return any(getattr(type(cb), h, None) is not getattr(pl.Callback, h) for cb in trainer.callbacks
               for h in STEP_HOOKS)


def clip_(grads: list[torch.Tensor], clip_val: float, algorithm: str) -> None:
    """torch.nn.utils.clip_grad_norm_ / clip_grad_value_ (Lightning's gradient_clip_algorithm), in place."""
    if algorithm == "value":
        for g in grads:
            g.clamp_(-clip_val, clip_val)
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = (clip_val / (total + 1e-6)).clamp(max=1.0)  # as torch: no host sync, 1.0 when within the norm
    for g in grads:
        g.mul_(coef)


class HandSteps:
    """One impl's SGD steps for the module: `minibatch(X, y, last_of_epoch)` per minibatch."""

    def __init__(self, module, accumulate: int = 1, clip_val: float | None = None, clip_algorithm: str = "norm"):
        self.module, self.accumulate = module, accumulate
        self.clip_val, self.clip_algorithm = clip_val or None, clip_algorithm
        self.bare = False
        self._window: list[torch.Tensor] = []  # the losses of the minibatches since the last step

    def start(self, trainer) -> None:
        """At fit start: bare steps when no callback listens to Lightning's per-step hooks."""
        self.bare = not step_hooks_in_use(trainer)
        self.opt = self.module.optimizers()  # Lightning's wrapper of the optimizer, once: asked every step
        if self.bare:
            lightning_adapter.check_supported(self.opt)
        self._window = []

    def minibatch(self, X, y, last_of_epoch: bool):
        """Forward and backward of one minibatch, then the SGD step if its window is complete: (loss, O)."""
        loss, O = self.forward_backward(X, y, 1.0 / self.accumulate)
        self._window.append(loss.detach())
        if len(self._window) == self.accumulate or last_of_epoch:
            window_loss = window_mean(self._window)
            self._window = []
            self.step(window_loss)
            self.module.after_sgd_step(window_loss)
        return loss, O

    def step(self, window_loss: torch.Tensor) -> None:
        module = self.module
        grads = self.grads()
        window_loss = average_loss_and_grads(module.trainer, window_loss, grads)
        module.guard.check(window_loss)
        if self.clip_val:
            self.clip(grads)
        self.update(grads)

    # impl-specific: the minibatch's loss and gradients, clipping, the update and its count

    def forward_backward(self, X, y, scale: float): ...

    def grads(self) -> list[torch.Tensor]: ...

    def clip(self, grads) -> None: ...

    def update(self, grads) -> None: ...


class ScratchSteps(HandSteps):
    """impl=scratch: O = XW + b, dL/dO from the loss's formula, dL/dW = X^T G, dL/db = sum of rows of G,
    the hand-written SGD of models.py. The step is counted by Lightning's no-op optimizer (its hooks run)
    or, bare, by the adapter."""

    def __init__(self, module, **kwargs):
        super().__init__(module, **kwargs)
        self._grads: list[torch.Tensor] | None = None

    @torch.no_grad()
    def forward_backward(self, X, y, scale):
        net = self.module.net
        O = net(X)
        loss, G = self.module.loss_fn.value_and_grad(O, y)
        if scale != 1.0:
            G = G.mul_(scale)
        grads = list(net.grads(X, G))
        if self._grads is None:
            self._grads = grads
        else:
            for acc, g in zip(self._grads, grads, strict=True):
                acc.add_(g)
        return loss, O

    def grads(self):
        return self._grads

    def clip(self, grads):
        clip_(grads, self.clip_val, self.clip_algorithm)

    @torch.no_grad()
    def update(self, grads):
        module = self.module
        module.sgd.step([module.net.W, module.net.b], grads)
        self._grads = None
        if self.bare:
            lightning_adapter.count_optimizer_step(self.opt)
        else:
            self.opt.step()  # Lightning's no-op optimizer: runs the step hooks and counts the step


class NNSteps(HandSteps):
    """impl=nn in the speed mode: autograd and the torch.optim optimizer, stepped by hand."""

    def forward_backward(self, X, y, scale):
        module = self.module
        O = module.net(X)
        loss = module.loss_fn.torch_value(O, y)
        if self.bare:
            (loss * scale if scale != 1.0 else loss).backward()
        else:
            module.manual_backward(loss * scale if scale != 1.0 else loss)
        return loss, O.detach()

    def grads(self):
        return [p.grad for p in self.module.net.parameters() if p.grad is not None]

    def clip(self, grads):
        self.module.clip_gradients(self.opt, gradient_clip_val=self.clip_val,
                                   gradient_clip_algorithm=self.clip_algorithm)

    def update(self, grads):
        opt = self.opt
        if self.bare:
            opt.optimizer.step()
            opt.optimizer.zero_grad(set_to_none=True)
            lightning_adapter.count_optimizer_step(opt)
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
