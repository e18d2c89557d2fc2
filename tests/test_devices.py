"""Every tensor the training and evaluation steps create lives on the module's device.

No GPU has been available to this project, so the steps run on PyTorch's `meta` device under
`OneDevice`, a torch function mode that refuses any call mixing a tensor on the CPU with one on
another device, as a GPU refuses it (stricter: it refuses 0-dim CPU tensors too, which a GPU accepts
in element-wise ops only, and which cost a host-to-device copy each time). `meta` alone would not do:
it lets a matmul, gather or in-place op with a CPU tensor pass.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from softmax_lab.divergence import DivergenceGuard
from softmax_lab.losses import LOSSES
from softmax_lab.module import SoftmaxRegressionModule
from softmax_lab.stepping import clip_

META = torch.device("meta")


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, list | tuple):
        for v in x:
            yield from _tensors(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)


class OneDevice(TorchFunctionMode):
    """Raise at any torch call whose tensor arguments are on the CPU and on another device at once."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device.type for t in _tensors((args, kwargs))}
        if "cpu" in devices and len(devices) > 1:
            raise RuntimeError(f"{getattr(func, '__name__', func)} mixes devices {sorted(devices)}")
        return func(*args, **kwargs)


@pytest.mark.parametrize("mix", [
    lambda X: torch.stack([X.sum(), torch.tensor(4.0)]),  # the bug issue 10 found by reading
    lambda X: X @ torch.rand(784, 10),
    lambda X: X.clone().sub_(torch.rand(4, 784)),
    lambda X: X.gather(1, torch.zeros(4, 1, dtype=torch.long)),
    lambda X: X * torch.tensor(2.0),
])
def test_one_device_catches_a_host_tensor(mix):  # so the test below would fail for the bugs it looks for
    X = torch.rand(4, 784, device=META)
    with OneDevice(), pytest.raises(RuntimeError, match="mixes devices"):
        mix(X)


@pytest.mark.parametrize("impl", ["scratch", "nn"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_train_and_eval_steps_stay_on_the_module_device(impl, loss):
    opts = {"ce": {}, "mse": {"on": "probs"}, "margin": {"margin": 2.0}, "huber": {"on": "probs"}, "l1": {},
            "bce": {}}.get(loss, {})
    module = SoftmaxRegressionModule(
        impl=impl, loss={"_target_": f"softmax_lab.losses.{type(LOSSES[loss]()).__name__}", **opts},
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True},
        accumulate_grad_batches=2, gradient_clip_val=0.5)
    module.to(META)
    X, y = torch.rand(8, 784, device=META), torch.randint(0, 10, (8,), device=META)
    with OneDevice():
        # torch has no meta kernel for F.multi_margin_loss's backward: nn's margin is checked up to its forward
        _steps(module, impl, X, y, backward=not (impl == "nn" and loss == "margin"))
    assert all(t.device == META for t in [*module.parameters(), *module.buffers()])


def _steps(module, impl, X, y, backward=True):
    if impl == "nn":  # Lightning's automatic loop calls training_step, then backward
        loss = module.training_step((X, y), 0)
        if not backward:
            module._eval_step((X, y), module.val_metrics)
            return
        loss.backward()
        module.steps.bare = True  # the speed mode's hand steps
    value, O = module.steps.forward_backward(X, y, 0.5)
    value, O = module.steps.forward_backward(X, y, 0.5)  # accumulated into the first minibatch's gradients
    module._record_train(value, O, y)
    grads = module.steps.grads()
    assert grads and all(g.device == META for g in grads)
    clip_(grads, 0.5, "norm")
    clip_(grads, 0.5, "value")
    DivergenceGuard(META, advice=lambda first: "", step_of=lambda: 3, deferred=True).check(value)
    if impl == "scratch":
        module.sgd.step([module.net.W, module.net.b], grads)
    for metrics in (module.val_metrics, module.test_metrics):
        module._eval_step((X, y), metrics)
        result = metrics.compute()
        assert all(v.device == META for v in result.values())
