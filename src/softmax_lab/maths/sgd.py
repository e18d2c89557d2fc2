"""The hand-written SGD step and gradient clipping, with torch's semantics (impl=scratch)."""

from __future__ import annotations

import torch
from torch import nn


class ScratchSGD(nn.Module):
    """Minibatch SGD with torch.optim.SGD's semantics for lr, momentum, weight_decay and nesterov:

        g <- g + weight_decay * p
        v <- momentum * v + g             (v starts at 0, so the first step has v = g, as torch)
        g <- g + momentum * v if nesterov else v
        p <- p - lr * g

    The velocities are buffers, so a checkpoint carries them and a resumed run continues exactly.
    """

    OPTIONS = ("lr", "momentum", "weight_decay", "nesterov")

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__()
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        for i, p in enumerate(params):
            self.register_buffer(f"velocity{i}", torch.zeros_like(p), persistent=momentum != 0)

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:
                v = getattr(self, f"velocity{i}")
                v.mul_(self.momentum).add_(g)
                g = g.add(v, alpha=self.momentum) if self.nesterov else v
            p.sub_(g, alpha=self.lr)


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
