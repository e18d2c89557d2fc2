"""DDP without DistributedDataParallel: replicas identical by construction, gradients averaged by hand.

impl=scratch has no autograd parameters, which DistributedDataParallel refuses, and the speed mode
takes several backward passes per forward, which it does not expect. Under softmax_lab's DDP
strategy (trainer/ddp_strategy.py) the module therefore broadcasts rank 0's parameters when fitting
starts and averages each SGD step's gradients and loss itself, in one all-reduce: the replicas take
the same steps, and every process sees the same loss, so a divergence stops all of them at one step.
Under Lightning's own DDP (impl=nn, one minibatch per step) the wrapper averages the gradients and
only the loss is averaged here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

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
