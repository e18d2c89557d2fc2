"""SGD steps the module takes itself, under Lightning's manual optimisation: a step's whole path after the
module's training_step, but for the divergence check (divergence.py).

impl=scratch (no autograd, no torch.optim) and impl=func (torch.func) always step here; impl=nn steps here
only in the speed mode (data.batches_per_step > 1): by default Lightning's automatic optimisation steps it. Each step
repeats what Lightning's automatic optimisation does, in its order, so a flag means the same in every
mode (trainer/flags.py decides, before the run, which flags are honoured here):

    loss / accumulate_grad_batches -> gradients, summed over a window of minibatches
    at the window's last minibatch, or the epoch's: DDP average -> divergence check -> clipping
    (torch's norm or value rule) -> update -> Lightning's optimizer step, which runs the step hooks
    and counts the step in trainer.global_step

By default every step goes through Lightning's public optimizer step (`LightningOptimizer.step`);
impl=scratch has no torch optimizer, so Lightning's stand-in, which updates nothing, is stepped after
the hand update. In the speed mode, when no callback listens to the per-step hooks, steps are taken
`bare` (torch's backward and step) and counted by `count_step` (bare_steps.py says why, and checks before the run
that this Lightning still counts them). A step object is given what it uses: the parameters, the loss, the
optimizer, the guard, the DDP average (at the end of this file).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from softmax_lab.maths.functional import loss_grads, sgd_update
from softmax_lab.maths.sgd import clip_


@dataclass(frozen=True)
class StepRules:
    """The Lightning flags a hand step honours itself: gradient accumulation and clipping."""

    accumulate: int = 1
    clip_val: float | None = None
    clip_algorithm: str = "norm"


def window_mean(losses: list[torch.Tensor]) -> torch.Tensor:
    """The loss of an accumulation window: its minibatches' mean (no stacking for the usual window of one)."""
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def count_step(optimizer) -> None:
    """Advance trainer.global_step by one SGD step taken with the torch optimizer (or by hand): the speed mode's one
    use of Lightning's private API (bare_steps.py says why, and refuses a Lightning without it)."""
    optimizer._on_before_step()
    optimizer._on_after_step()


class HandSteps(ABC):
    """One impl's SGD steps: `minibatch(X, y, last_of_epoch)` per minibatch.

    optimizer: Lightning's wrapper of the optimizer; average(loss, grads): the DDP average (`averager`);
    guard: the divergence guard; after_step(loss): called after each step with its (window's) loss; bare: take
    the steps outside Lightning's wrapper (the speed mode, `count_step`)."""

    def __init__(self, rules: StepRules, optimizer, average, guard, after_step: Callable[[torch.Tensor], None],
                 bare: bool = False):
        self.rules, self.optimizer, self.average, self.guard, self.after_step = rules, optimizer, average, guard, \
            after_step
        self.bare = bare
        self._window: list[torch.Tensor] = []  # the losses of the minibatches since the last step

    def minibatch(self, X, y, last_of_epoch: bool):
        """Forward and backward of one minibatch, then the SGD step if its window is complete: (loss, logits)."""
        loss, O = self.forward_backward(X, y, 1.0 / self.rules.accumulate)
        self._window.append(loss.detach())
        if len(self._window) == self.rules.accumulate or last_of_epoch:
            window_loss = window_mean(self._window)
            self._window = []
            grads = self.grads()
            window_loss = self.average(window_loss, grads)
            self.guard.check(window_loss)
            if self.rules.clip_val:
                self.clip(grads)
            self.update(grads)
            self.after_step(window_loss)
        return loss, O

    # impl-specific: the minibatch's loss and gradients, clipping, the update

    @abstractmethod
    def forward_backward(self, X, y, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The minibatch's loss (times `scale`) and logits; its gradients added to the window's."""

    @abstractmethod
    def grads(self) -> list[torch.Tensor]:
        """The window's gradients, one tensor per parameter, in the parameters' order."""

    @abstractmethod
    def clip(self, grads: list[torch.Tensor]) -> None:
        """Clip `grads` in place by the rules' value and algorithm, as Lightning does."""

    @abstractmethod
    def update(self, grads: list[torch.Tensor]) -> None:
        """Take the SGD step with `grads` and clear them for the next window."""


class ScratchSteps(HandSteps):
    """impl=scratch: O = XW + b, dL/dO from the loss's formula, dL/dW = X^T G, dL/db = sum of rows of G, the
    hand-written SGD of maths/sgd.py.

    Under a mixed precision (autocast) the products run in the low precision, as autograd's do for impl=nn,
    but the loss and dL/dO are taken in the parameters' precision (autocast runs torch's losses in float32)
    and the gradients are kept in it, so the update and the optimizer state stay float32 for both impls."""

    def __init__(self, net, loss_fn, sgd, **kwargs):
        super().__init__(**kwargs)
        self.net, self.loss_fn, self.sgd = net, loss_fn, sgd
        self.params = [net.W, net.b]
        self._grads: list[torch.Tensor] | None = None

    @torch.no_grad()
    def forward_backward(self, X, y, scale):
        O = self.net(X)
        loss, G = self.loss_fn.value_and_grad(O.to(self.net.W.dtype), y)
        if scale != 1.0:
            G = G.mul_(scale)
        grads = [g.to(p.dtype) for g, p in zip(self.net.grads(X, G.to(O.dtype)), self.params, strict=True)]
        if self._grads is None:
            self._grads = grads
        else:
            for acc, g in zip(self._grads, grads, strict=True):
                acc.add_(g)
        return loss, O

    def grads(self):
        return self._grads

    def clip(self, grads):
        clip_(grads, self.rules.clip_val, self.rules.clip_algorithm)

    @torch.no_grad()
    def update(self, grads):
        self.descend(grads)
        self._grads = None
        if self.bare:
            count_step(self.optimizer)
        else:
            self.optimizer.step()  # Lightning's stand-in optimizer: runs the step hooks and counts the step

    def descend(self, grads):
        self.sgd.step(self.params, grads)


class FuncSteps(ScratchSteps):
    """impl=func: the gradient a function transform (torch.func.grad_and_value) of the pure loss of maths/functional.py,
    the update the pure sgd_update, whose new parameters (and velocities) are copied into the module's tensors.
    Accumulation, DDP averaging and clipping act on the returned gradients as for impl=scratch."""

    def forward_backward(self, X, y, scale):
        params = {"W": self.net.W, "b": self.net.b}
        grads, (_, (loss, O)) = loss_grads(params, X, y, self.loss_fn, scale)
        if self._grads is None:
            self._grads = [grads["W"], grads["b"]]
        else:
            for acc, g in zip(self._grads, (grads["W"], grads["b"]), strict=True):
                acc.add_(g)  # as autograd accumulates into .grad
        return loss, O

    def descend(self, grads):
        sgd = self.sgd
        params, named = {"W": self.net.W, "b": self.net.b}, {"W": grads[0], "b": grads[1]}
        velocity = {"W": sgd.velocity0, "b": sgd.velocity1} if sgd.momentum else None
        new_params, new_velocity = sgd_update(params, named, velocity, sgd.lr, sgd.momentum, sgd.weight_decay,
                                              sgd.nesterov)
        for k in params:  # the module's tensors hold the new values: Lightning checkpoints and moves them
            params[k].copy_(new_params[k])
            if velocity is not None:
                velocity[k].copy_(new_velocity[k])


class NNSteps(HandSteps):
    """impl=nn in the speed mode: autograd and the torch.optim optimizer, stepped through Lightning's
    manual optimisation (`backward` is the module's manual_backward, `clip_gradients` its clip_gradients)."""

    def __init__(self, net, loss_fn, backward, clip_gradients, **kwargs):
        super().__init__(**kwargs)
        self.net, self.loss_fn, self.backward, self.clip_gradients = net, loss_fn, backward, clip_gradients

    def forward_backward(self, X, y, scale):
        O = self.net(X)
        loss = self.loss_fn.torch_value(O, y)
        scaled = loss * scale if scale != 1.0 else loss
        scaled.backward() if self.bare else self.backward(scaled)
        return loss, O.detach()

    def grads(self):
        return [p.grad for p in self.net.parameters() if p.grad is not None]

    def clip(self, grads):
        self.clip_gradients(self.optimizer, gradient_clip_val=self.rules.clip_val,
                            gradient_clip_algorithm=self.rules.clip_algorithm)

    def update(self, grads):
        if self.bare:
            self.optimizer.optimizer.step()
            self.optimizer.optimizer.zero_grad(set_to_none=True)
            count_step(self.optimizer)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


class LightningSteps:
    """impl=nn by default: Lightning's automatic optimisation takes the step (backward, accumulation, clipping,
    the optimizer); the module notes each minibatch's loss, averages (DDP) and checks the window's loss in
    on_before_optimizer_step, and reports the step once Lightning has taken it."""

    def __init__(self, average, guard, after_step: Callable[[torch.Tensor], None]):
        self.average, self.guard, self.after_step = average, guard, after_step
        self._window: list[torch.Tensor] = []  # the losses since the last optimizer step
        self._taken: torch.Tensor | None = None  # the loss of the step Lightning is taking

    def note(self, loss: torch.Tensor) -> torch.Tensor:
        self._window.append(loss.detach())
        return loss

    def before_step(self, grads: list[torch.Tensor]) -> None:
        loss = self.average(window_mean(self._window), grads)
        self._window = []
        self.guard.check(loss)
        self._taken = loss

    def after_batch(self) -> None:
        if self._taken is not None:  # not after a minibatch that only accumulated
            self.after_step(self._taken)
            self._taken = None


# DDP without DistributedDataParallel: replicas identical by construction, gradients averaged by hand.
# impl=scratch has no autograd parameters, which DistributedDataParallel refuses, and the speed mode takes several
# backward passes per forward, which it does not expect. Under softmax_lab's DDP strategy (trainer/ddp_strategy.py)
# the module therefore broadcasts rank 0's parameters when fitting starts and averages each SGD step's gradients
# and loss itself, in one all-reduce: the replicas take the same steps, and every process sees the same loss, so a
# divergence stops all of them at one step. Under Lightning's own DDP (impl=nn, one minibatch per step) the wrapper
# averages the gradients and only the loss is averaged here.

Averager = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]


def wrapped_by_ddp(trainer) -> bool:
    """Whether Lightning wrapped the module in DistributedDataParallel (which averages the gradients)."""
    return isinstance(trainer.strategy.model, DistributedDataParallel)


def broadcast_parameters(trainer, params: list[torch.Tensor]) -> None:
    """Copy rank 0's values into every replica's parameters (no-op on one process)."""
    if trainer.world_size == 1:
        return
    values = trainer.strategy.broadcast([p.detach().cpu() for p in params], src=0)
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v.to(p.device, p.dtype))


def average_loss_and_grads(strategy, loss: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Average `loss` and, in place, `grads` across processes in one all-reduce; return the mean loss."""
    flat = torch.cat([loss.detach().reshape(1).to(grads[0].dtype if grads else loss.dtype),
                      *(g.reshape(-1) for g in grads)])
    flat = strategy.reduce(flat, reduce_op="mean")
    for g, mean in zip(grads, flat[1:].split([g.numel() for g in grads]), strict=True):
        g.copy_(mean.view_as(g))
    return flat[0]


def averager(trainer) -> Averager:
    """(loss, grads) -> the loss averaged across processes, the grads averaged in place: nothing on one process,
    the loss only where DistributedDataParallel averages the gradients itself."""
    if trainer.world_size == 1:
        return lambda loss, grads: loss
    strategy = trainer.strategy
    if wrapped_by_ddp(trainer):
        return lambda loss, grads: average_loss_and_grads(strategy, loss, [])
    return lambda loss, grads: average_loss_and_grads(strategy, loss, grads)
