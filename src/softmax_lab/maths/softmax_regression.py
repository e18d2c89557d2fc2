"""Softmax regression two ways: by hand (W, b, no autograd) and with torch.nn.

Both start from the same draw, W ~ N(0, init_std^2) of shape (inputs, classes) and b = 0, so the
same seed gives the same initial model in either implementation.
"""

from __future__ import annotations

import torch
from torch import nn


def initial_weights(num_inputs: int, num_classes: int, init_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(num_inputs, num_classes) * init_std, torch.zeros(num_classes)


class ScratchSoftmaxRegression(nn.Module):
    """O = XW + b with W: (inputs, classes). No layers, no autograd (impl=scratch; impl=func keeps its W, b here).

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


def make_nn_model(num_inputs: int = 784, num_classes: int = 10, init_std: float = 0.01) -> nn.Sequential:
    """nn.Sequential(Flatten, Linear) with the same initial draw as the scratch model."""
    W, b = initial_weights(num_inputs, num_classes, init_std)  # first, so the RNG matches the scratch model's
    net = nn.Sequential(nn.Flatten(), nn.Linear(num_inputs, num_classes))
    with torch.no_grad():
        net[1].weight.copy_(W.T)
        net[1].bias.copy_(b)
    return net


def linear_weights(state_dict: dict, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of a module's state dict, W as (inputs, classes), whichever implementation saved it."""
    if impl in ("scratch", "func"):
        return state_dict["net.W"], state_dict["net.b"]
    return state_dict["net.1.weight"].T, state_dict["net.1.bias"]
