"""The two implementations: same start, same updates, the same model after k steps; and the module."""

from __future__ import annotations

import pytest
import torch

from softmax_lab.errors import ConfigError
from softmax_lab.maths.losses import LOSSES
from softmax_lab.maths.sgd import ScratchSGD
from softmax_lab.maths.softmax_regression import ScratchSoftmaxRegression, make_nn_model
from softmax_lab.steps.lightning_module import SoftmaxRegressionModule

LOSS_LRS = {"ce": 0.1, "mse": 0.01, "margin": 0.1, "huber": 0.01, "l1": 0.003, "bce": 0.3}


def random_batches(k=50, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, 784, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g))
            for _ in range(k)]


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("nesterov", [False, True])
def test_scratch_and_nn_hold_the_same_weights_after_50_steps(name, nesterov):
    torch.manual_seed(0)
    scratch = ScratchSoftmaxRegression().double()
    torch.manual_seed(0)
    net = make_nn_model().double()
    assert torch.equal(scratch.W, net[1].weight.T)  # same seed, same draw
    lr, momentum, wd = LOSS_LRS[name], 0.9, 1e-3
    sgd = ScratchSGD([scratch.W, scratch.b], lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    loss = LOSSES[name]()
    for X, y in random_batches():
        with torch.no_grad():
            O = scratch(X)
            sgd.step([scratch.W, scratch.b], list(scratch.grads(X, loss.grad(O, y))))
        opt.zero_grad()
        loss.torch_value(net(X), y).backward()
        opt.step()
    for mine, theirs in ((scratch.W, net[1].weight.T), (scratch.b, net[1].bias)):
        rel = ((mine - theirs).norm() / theirs.norm()).item()
        assert rel < 1e-5, rel


def test_scratch_gradients_equal_autograd_through_the_model():
    X, y = random_batches(1)[0]
    model = ScratchSoftmaxRegression().double()
    W, b = model.W.detach().clone().requires_grad_(), model.b.detach().clone().requires_grad_()
    LOSSES["ce"]().torch_value(X @ W + b, y).backward()
    gW, gb = model.grads(X, LOSSES["ce"]().grad(model(X), y))
    torch.testing.assert_close(gW, W.grad)
    torch.testing.assert_close(gb, b.grad)


def test_scratch_model_needs_no_autograd():
    m = SoftmaxRegressionModule(impl="scratch")
    assert not any(p.requires_grad for p in m.parameters())
    assert {"net.W", "net.b"} <= set(m.state_dict())


def test_scratch_refuses_non_sgd_optimizers():
    with pytest.raises(ConfigError, match="impl=scratch .* optimizer=torch.optim.Adam .* impl=nn"):
        SoftmaxRegressionModule(impl="scratch", optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3})
    with pytest.raises(ConfigError, match="optimizer.dampening"):
        SoftmaxRegressionModule(impl="scratch", optimizer={"_target_": "torch.optim.SGD", "lr": 0.1,
                                                           "dampening": 0.5})


def test_unknown_impl_is_refused():
    with pytest.raises(ConfigError, match="impl='jax'"):
        SoftmaxRegressionModule(impl="jax")
