"""Sharpness: the largest eigenvalue of a loss's Hessian in the parameters, and the stability edge.

Plain gradient descent on a quadratic with Hessian H is stable only for lr < 2 / lambda_max(H): the
component along the top eigenvector is multiplied by (1 - lr * lambda_max) each step. So lambda_max of
the full-batch loss says which learning rates sit on which side of the edge. It is found by power
iteration on Hessian-vector products (torch.func.grad of torch.func.grad), never forming H.
"""

from __future__ import annotations

import torch
from torch.func import grad

from softmax_lab.maths.functional import Params, logits


def full_batch_loss(loss_fn, X: torch.Tensor, y: torch.Tensor, chunk: int = 8192):
    """params -> the mean loss over all of X (in chunks, weighted by their size: the same mean, less memory)."""
    def loss_of(params: Params) -> torch.Tensor:
        total = 0.0
        for i in range(0, len(X), chunk):
            Xc, yc = X[i : i + chunk], y[i : i + chunk]
            total = total + loss_fn.twice_differentiable_value(logits(params, Xc), yc) * len(Xc)
        return total / len(X)
    return loss_of


def hvp(loss_of, params: Params, v: Params) -> Params:
    """H v = the gradient of <grad(params), v> (reverse over reverse: every torch loss has a double backward)."""
    return grad(lambda p: _dot(grad(loss_of)(p), v))(params)


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def top_eigenpair(loss_of, params: Params, iters: int = 100, tol: float = 1e-5, seed: int = 0,
                  start: Params | None = None) -> tuple[float, Params]:
    """(lambda_max, its eigenvector) of the Hessian of loss_of at params, by power iteration on H v in the params'
    dtype, from `start` (a previous eigenvector: warm starts along a training run) or a random direction.

    The losses here are convex, so the Hessian is positive semi-definite and its largest eigenvalue is
    the one of largest magnitude; a loss that is piecewise linear (margin, l1) has H = 0 almost everywhere,
    and the answer is 0. The Rayleigh quotient never overestimates; it stops when it changes by less than tol."""
    params = {k: p.detach() for k, p in params.items()}
    if start is None:
        g = torch.Generator().manual_seed(seed)
        start = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    norm = _dot(start, start).sqrt()
    v = {k: x / norm for k, x in start.items()}
    value = 0.0
    for _ in range(iters):
        Hv = hvp(loss_of, params, v)
        new = _dot(v, Hv).item()  # the Rayleigh quotient
        norm = _dot(Hv, Hv).sqrt()
        if norm == 0:
            return 0.0, v
        v = {k: x / norm for k, x in Hv.items()}
        if abs(new - value) <= tol * max(abs(new), 1e-12):
            return new, v
        value = new
    return value, v


def top_eigenvalue(loss_of, params: Params, iters: int = 100, tol: float = 1e-5, seed: int = 0) -> float:
    """lambda_max of the Hessian of loss_of at params (top_eigenpair's value)."""
    return top_eigenpair(loss_of, params, iters, tol, seed)[0]
