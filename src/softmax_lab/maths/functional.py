"""Softmax regression as pure functions of its parameters (impl=func), differentiated by torch.func.

The style of MindSpore's functional autodiff (and JAX's): the model is a function of a parameter dict
{"W": (inputs, classes), "b": (classes,)}, the gradient a transform of that function, the update a
function that returns new parameters. Nothing holds state; the module copies the result back.

    MindSpore                           here (torch.func)
    ops.grad(fn)                        torch.func.grad(fn)
    ops.value_and_grad(fn, has_aux=True) torch.func.grad_and_value(fn, has_aux=True)
    ops.stop_gradient(x)                x.detach()

With has_aux=True only the first output is differentiated; the logits ride along as the auxiliary
output for the metrics, returned without a graph (what stop_gradient does for MindSpore's auxiliary
outputs).
"""

from __future__ import annotations

import torch
from torch.func import grad_and_value

Params = dict[str, torch.Tensor]


def logits(params: Params, X: torch.Tensor) -> torch.Tensor:
    """O = XW + b, as torch.nn.Linear computes it, so autograd's gradients are nn's to the bit."""
    return torch.addmm(params["b"], X.reshape(len(X), -1), params["W"])


def objective(params: Params, X: torch.Tensor, y: torch.Tensor, loss_fn, scale: float = 1.0):
    """The minibatch's loss times `scale` (1/accumulate, as Lightning divides), and (the loss, the logits) as aux."""
    O = logits(params, X)
    loss = loss_fn.torch_value(O, y)
    return loss * scale if scale != 1.0 else loss, (loss.detach(), O.detach())


# (grads, (scaled loss, (loss, logits))): the gradient as a function transform of the objective
loss_grads = grad_and_value(objective, has_aux=True)


def sgd_update(params: Params, grads: Params, velocity: Params | None, lr: float, momentum: float = 0.0,
               weight_decay: float = 0.0, nesterov: bool = False) -> tuple[Params, Params | None]:
    """One SGD step as torch.optim.SGD takes it (same operations, same rounding): (new params, new velocity)."""
    new_params, new_velocity = {}, {}
    for k, p in params.items():
        g = grads[k]
        if weight_decay:
            g = torch.add(g, p, alpha=weight_decay)
        if momentum:
            v = torch.add(velocity[k].mul(momentum), g)
            new_velocity[k] = v
            g = torch.add(g, v, alpha=momentum) if nesterov else v
        new_params[k] = torch.sub(p, g, alpha=lr)
    return new_params, new_velocity if momentum else velocity
