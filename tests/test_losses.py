"""Every loss: the hand-written value equals torch's, the analytic gradient equals autograd's."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad

from softmax_lab.maths.losses import L1, LOSSES, BinaryCrossEntropy, CrossEntropy, Huber, Margin, SquaredError, softmax

CASES = [
    ("ce", {}), ("mse", {"on": "logits"}), ("mse", {"on": "probs"}), ("margin", {}), ("margin", {"margin": 2.5}),
    ("huber", {"on": "logits"}), ("huber", {"on": "probs"}), ("huber", {"delta": 0.3}), ("l1", {"on": "logits"}),
    ("l1", {"on": "probs"}), ("bce", {}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for n, o in CASES]


def batch(scale=3.0, n=64, C=10, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g, dtype=dtype) * scale, torch.randint(0, C, (n,), generator=g)


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
@pytest.mark.parametrize("scale", [0.01, 3.0])
def test_value_equals_torch_form(name, opts, scale):
    loss = LOSSES[name](**opts)
    O, y = batch(scale)
    torch.testing.assert_close(loss.value(O, y), loss.torch_value(O, y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_analytic_gradient_equals_autograd(name, opts):
    loss = LOSSES[name](**opts)
    O, y = batch(2.0)
    expected = grad(lambda o: loss.torch_value(o, y))(O)
    torch.testing.assert_close(loss.grad(O, y), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
def test_extreme_logits_stay_finite_and_agree(name, opts):
    loss = LOSSES[name](**opts)
    O, y = batch(1.0, dtype=torch.float32)
    O = torch.where(torch.rand(O.shape, generator=torch.Generator().manual_seed(1)) > 0.5, 1e4, -1e4)
    value, g = loss.value(O, y), loss.grad(O, y)
    assert torch.isfinite(value) and torch.isfinite(g).all()
    torch.testing.assert_close(value, loss.torch_value(O, y), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, grad(lambda o: loss.torch_value(o, y))(O), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, opts", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_value_and_grad_the_training_step_uses_agree_with_torch_and_autograd(name, opts, dtype):
    # value_and_grad is what impl=scratch trains with (cross-entropy's is a fused pass of its own), so it is
    # checked against the oracles, not against value() and grad()
    loss = LOSSES[name](**opts)
    O, y = batch(5.0, dtype=dtype)
    value, g = loss.value_and_grad(O.clone(), y)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(value, loss.torch_value(O, y), **tol)
    torch.testing.assert_close(g, grad(lambda o: loss.torch_value(o, y))(O), **tol)


def test_formulas_on_a_hand_computed_example():
    O, y = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64), torch.tensor([0])
    lse = torch.log(torch.exp(torch.tensor(2.0)) + 1 + torch.exp(torch.tensor(-1.0))).double()
    assert CrossEntropy().value(O, y).item() == pytest.approx((lse - 2).item())
    assert SquaredError().value(O, y).item() == pytest.approx(0.5 * (1 + 0 + 1))
    assert Margin(margin=3.0).value(O, y).item() == pytest.approx(max(0, 3 - 2) + max(0, 3 - 3))  # 1 + 0
    assert Huber(delta=0.5).value(O, y).item() == pytest.approx(0.5 * (1 - 0.25) * 2)
    assert L1().value(O, y).item() == pytest.approx(2.0)
    sp = lambda o: torch.log1p(torch.exp(torch.tensor(o))).item()  # noqa: E731  softplus
    assert BinaryCrossEntropy().value(O, y).item() == pytest.approx(sp(2.0) - 2.0 + sp(0.0) + sp(-1.0))
    sig = lambda o: 1 / (1 + torch.exp(-torch.tensor(o))).item()  # noqa: E731
    torch.testing.assert_close(BinaryCrossEntropy().grad(O, y), torch.tensor([[sig(2.0) - 1, 0.5, sig(-1.0)]],
                                                                                dtype=torch.float64))
    torch.testing.assert_close(Margin(margin=3.0).grad(O, y), torch.tensor([[-1.0, 1.0, 0.0]], dtype=torch.float64))


def test_softmax_is_shift_invariant_and_sums_to_one():
    O, _ = batch(100.0)
    P = softmax(O)
    torch.testing.assert_close(P, softmax(O + 1000))
    torch.testing.assert_close(P.sum(1), torch.ones(len(O), dtype=O.dtype))


def test_unknown_on_mode_is_refused():
    with pytest.raises(ValueError, match="loss.on='sigmoid'"):
        SquaredError(on="sigmoid")
