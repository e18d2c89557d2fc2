"""Softmax regression two ways: by hand (W, b and an analytic-gradient SGD) and with torch.nn.

Both start from the same draw, W ~ N(0, init_std^2) of shape (inputs, classes) and b = 0, so the
same seed gives the same initial model in either implementation.
"""

from __future__ import annotations

import torch
from torch import nn


def initial_weights(num_inputs: int, num_classes: int, init_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(num_inputs, num_classes) * init_std, torch.zeros(num_classes)


class ScratchSoftmaxRegression(nn.Module):
    """O = XW + b with W: (inputs, classes). No layers, no autograd.

    An nn.Module only as a container, so Lightning saves W and b in checkpoints and moves them
    between devices; the parameters never require gradients.
    """

    def __init__(self, num_inputs: int = 784, num_classes: int = 10, init_std: float = 0.01):
        super().__init__()
        W, b = initial_weights(num_inputs, num_classes, init_std)
        # W is the (inputs, classes) matrix of the formulas, kept in memory as its transpose (as nn.Linear
        # keeps its weight): both products below run 2-4x faster on the CPU in that layout.
        self.W = nn.Parameter(W.T.contiguous().T, requires_grad=False)
        self.b = nn.Parameter(b, requires_grad=False)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, X.reshape(len(X), -1), self.W)  # (n, classes)

    @staticmethod
    def grads(X: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dL/dW = X^T G, dL/db = row sums of G, for G = dL/dO of shape (n, classes).

        X^T G is computed as (G^T X)^T: the same numbers, produced directly in W's memory layout.
        """
        return (G.T @ X.reshape(len(X), -1)).T, G.sum(dim=0)


class ScratchSGD(nn.Module):
    """Minibatch SGD with torch.optim.SGD's semantics for lr, momentum, weight_decay and nesterov:

        g <- g + weight_decay * p
        v <- momentum * v + g             (v starts at 0, so the first step has v = g, as torch)
        g <- g + momentum * v if nesterov else v
        p <- p - lr * g

    The velocities are buffers, so a checkpoint carries them and a resumed run continues exactly.
    """

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


def make_nn_model(num_inputs: int = 784, num_classes: int = 10, init_std: float = 0.01) -> nn.Sequential:
    """nn.Sequential(Flatten, Linear) with the same initial draw as the scratch model."""
    W, b = initial_weights(num_inputs, num_classes, init_std)  # first, so the RNG matches the scratch model's
    net = nn.Sequential(nn.Flatten(), nn.Linear(num_inputs, num_classes))
    with torch.no_grad():
        net[1].weight.copy_(W.T)
        net[1].bias.copy_(b)
    return net
