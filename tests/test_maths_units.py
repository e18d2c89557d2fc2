"""Small units of the maths part against independent oracles: the chunked full-batch loss against one pass, norm
clipping against torch.nn.utils.clip_grad_norm_, the power iteration against a Hessian whose eigenvalues are known."""

from __future__ import annotations

import pytest
import torch

from softmax_lab.maths.losses import CrossEntropy
from softmax_lab.maths.sgd import clip_
from softmax_lab.maths.sharpness import full_batch_loss, top_eigenpair, top_eigenvalue


def test_the_chunked_full_batch_loss_is_the_mean_of_one_pass():
    torch.manual_seed(0)
    X, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    params = {"W": torch.randn(5, 3, dtype=torch.float64), "b": torch.randn(3, dtype=torch.float64)}
    whole = torch.nn.functional.cross_entropy(X @ params["W"] + params["b"], y)
    assert full_batch_loss(CrossEntropy(), X, y, chunk=3)(params).item() == pytest.approx(whole.item(), rel=1e-12)
    assert full_batch_loss(CrossEntropy(), X, y)(params).item() == pytest.approx(whole.item(), rel=1e-12)


@pytest.mark.parametrize("clip_val", [0.5, 100.0])
def test_norm_clipping_is_torchs(clip_val):
    torch.manual_seed(1)
    grads = [torch.randn(4, 3), torch.randn(3)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, clip_val)
    clip_(grads, clip_val, "norm")
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=0)


def quadratic(scales: list[float]):
    """0.5 sum_i a_i w_i^2: its Hessian is diag(a), whose top eigenvalue is max(a)."""
    a = torch.tensor(scales, dtype=torch.float64)
    return lambda params: 0.5 * (a * params["w"] ** 2).sum(), {"w": torch.ones(len(scales), dtype=torch.float64)}


def test_the_power_iteration_finds_the_top_eigenvalue_to_its_tolerance():
    loss_of, params = quadratic([3.0, 1.0, 0.5])
    assert top_eigenvalue(loss_of, params) == pytest.approx(3.0, rel=1e-4)
    value, v = top_eigenpair(loss_of, params, tol=1e-10)
    assert value == pytest.approx(3.0, rel=1e-9) and abs(v["w"][0].item()) == pytest.approx(1.0, rel=1e-4)


def test_a_zero_hessian_answers_zero_and_a_finite_direction():
    value, v = top_eigenpair(lambda params: params["w"].sum(), {"w": torch.ones(3, dtype=torch.float64)})
    assert value == 0.0 and torch.isfinite(v["w"]).all() and torch.linalg.vector_norm(v["w"]).item() == \
        pytest.approx(1.0)


def test_few_iterations_stop_short_of_the_answer():
    loss_of, params = quadratic([3.0, 2.9])
    assert top_eigenvalue(loss_of, params, iters=2) < 2.999


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_every_loss_and_gradient_stays_in_the_logits_dtype(dtype):
    from softmax_lab.maths.losses import LOSSES

    torch.manual_seed(2)
    O, y = torch.randn(4, 10).to(dtype), torch.randint(0, 10, (4,))
    for name, cls in LOSSES.items():
        loss = cls()
        assert loss.value(O, y).dtype == dtype and loss.grad(O, y).dtype == dtype, name


def test_the_losses_defaults_when_built_bare():
    from softmax_lab.maths.losses import LOSSES

    assert {name: cls().default_lr for name, cls in LOSSES.items()} == {
        "ce": 0.1, "mse": 0.01, "margin": 0.1, "huber": 0.01, "l1": 0.01, "bce": 0.1}  # the configs set their own
    assert LOSSES["margin"]().margin == 1.0


def test_top_eigenpairs_default_tolerance_is_tight():
    loss_of, params = quadratic([3.0, 1.0, 0.5])
    assert top_eigenpair(loss_of, params)[0] == pytest.approx(3.0, rel=1e-4)


def test_sgd_update_without_momentum_hands_the_velocity_back_untouched():
    from softmax_lab.maths.functional import sgd_update

    params, grads = {"W": torch.ones(2)}, {"W": torch.full((2,), 0.5)}
    new, velocity = sgd_update(params, grads, None, 0.1)
    assert velocity is None and torch.equal(new["W"], torch.full((2,), 0.95))


def test_sgd_update_with_momentum_is_torchs_heavy_ball_unless_nesterov_is_asked():
    from softmax_lab.maths.functional import sgd_update

    torch.manual_seed(3)
    p0, grads = torch.randn(4, dtype=torch.float64), [torch.randn(4, dtype=torch.float64) for _ in range(3)]
    for nesterov in (False, True):
        ref = torch.nn.Parameter(p0.clone())
        opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9, nesterov=nesterov)
        params, velocity = {"W": p0.clone()}, {"W": torch.zeros(4, dtype=torch.float64)}
        for g in grads:
            ref.grad = g.clone()
            opt.step()
            params, velocity = sgd_update(params, {"W": g}, velocity, 0.1, 0.9, **({"nesterov": True} if nesterov
                                                                                   else {}))
        torch.testing.assert_close(params["W"], ref.detach(), rtol=1e-12, atol=1e-12)


def test_cross_entropy_is_stable_row_by_row():
    from softmax_lab.maths.losses import CrossEntropy

    O = torch.tensor([[1000.0, 0.0], [0.0, 1.0]])  # one row far above the other: each row shifts by its own max
    y = torch.tensor([0, 1])
    value, grad = CrossEntropy().value_and_grad(O, y)
    torch.testing.assert_close(value, torch.nn.functional.cross_entropy(O, y))
    O.requires_grad_(True)
    torch.nn.functional.cross_entropy(O, y).backward()
    torch.testing.assert_close(grad, O.grad)


def test_scratch_sgds_defaults_are_plain_sgd_and_only_momentum_is_checkpointed():
    from softmax_lab.maths.sgd import ScratchSGD

    p, g = torch.ones(3), torch.full((3,), 0.5)
    sgd = ScratchSGD([p], lr=0.1)
    sgd.step([p], [g])
    sgd.step([p], [g])
    torch.testing.assert_close(p, torch.full((3,), 0.9))
    assert list(sgd.state_dict()) == [] and list(ScratchSGD([p], lr=0.1, momentum=0.9).state_dict()) == ["velocity0"]
