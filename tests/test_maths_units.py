"""Small units of the maths part against independent oracles: the chunked full-batch loss against one pass, norm
clipping against torch.nn.utils.clip_grad_norm_, the power iteration against a Hessian whose eigenvalues are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softmax_lab.maths.losses import LOSSES, CrossEntropy, name_of
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


# --- the evaluation metrics against sums done by hand ----------------------------------------------------------------

ROWS = [([0.9, 0.05, 0.05], 0), ([0.65, 0.3, 0.05], 1), ([0.2, 0.7, 0.1], 1), ([0.55, 0.4, 0.05], 0),
        ([0.05, 0.1, 0.85], 2)]  # predicted 0, 0, 1, 0, 2: four right; confidences .9 .65 .7 .55 .85


def hand_metrics(bins: int = 5):
    from softmax_lab.maths.metrics import EvalMetrics

    P = torch.tensor([p for p, _ in ROWS], dtype=torch.float64)
    y = torch.tensor([c for _, c in ROWS])
    metrics = EvalMetrics(num_classes=3, confusion=True, bins=bins)
    metrics.update(P.log().float(), y, torch.tensor(2.0))
    return metrics.compute(), P, y


def test_eval_metrics_are_the_sums_by_hand():
    out, P, y = hand_metrics()
    onehot = torch.nn.functional.one_hot(y, 3).double()
    assert out["acc"] == pytest.approx(4 / 5) and out["loss"] == pytest.approx(2.0)  # a batch mean, weighted by n
    assert out["nll"] == pytest.approx(float(-P.gather(1, y[:, None]).log().mean()), rel=1e-5)
    assert out["brier"] == pytest.approx(float(((P - onehot) ** 2).sum(1).mean()), rel=1e-5)
    assert out["entropy"] == pytest.approx(float(-(P * P.log()).sum(1).mean()), rel=1e-5)
    # five bins of width 0.2: .55 in the third, .65 and .7 in the fourth, .85 and .9 in the fifth
    assert out["bin_count"].tolist() == [0, 0, 1, 2, 2]
    assert out["bin_acc"].tolist() == pytest.approx([0, 0, 1, 0.5, 1])
    assert out["bin_conf"].tolist() == pytest.approx([0, 0, 0.55, 0.675, 0.875], rel=1e-5)
    assert out["ece"] == pytest.approx((0.45 + 0.35 + 0.25) / 5, rel=1e-5)
    assert out["per_class_acc"] == pytest.approx([1.0, 0.5, 1.0])  # class 2 has one image


def test_eval_metrics_of_one_image():
    from softmax_lab.maths.metrics import EvalMetrics

    metrics = EvalMetrics(num_classes=3)
    metrics.update(torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0]), torch.tensor(0.5))
    out = metrics.compute()
    assert out["acc"] == 1.0 and out["loss"] == 0.5


def test_a_confidence_of_zero_and_one_a_rounding_over_one_fall_in_the_end_bins():
    from softmax_lab.maths.metrics import confidence_bin

    conf = torch.tensor([0.0, 1e-9, 0.1, 0.1000001, 0.95, 1.0, 1.0000001])
    assert confidence_bin(conf, 10).tolist() == [0, 0, 0, 1, 9, 9, 9]


def test_top_label_keeps_float64_logits_in_float64():
    from softmax_lab.maths.metrics import top_label

    O = torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64)  # a difference float32 cannot hold
    logp, conf, pred = top_label(O)
    assert logp.dtype == torch.float64 and pred.item() == 1 and conf.item() != 0.5


# --- pixels and weights -----------------------------------------------------------------------------------------------

def test_prepared_pixels_are_centred_by_the_mean_and_scaled_by_the_std():
    from softmax_lab.maths.pixels import prepare_pixels

    X = torch.tensor([0.0, 0.25, 0.5, 1.0]).repeat(196).reshape(1, 28, 28)
    out = prepare_pixels(X, None, mean=0.5, std=0.25)
    assert out.shape == (1, 784) and out[0, :4].tolist() == [-2.0, -1.0, 0.0, 2.0]


def test_resized_pixels_match_pillows_antialiased_bilinear():
    from PIL import Image

    from softmax_lab.maths.pixels import resize_pixels

    torch.manual_seed(0)
    X = torch.rand(2, 28, 28)
    out = resize_pixels(X, 10).reshape(2, 10, 10)
    for i in range(2):
        pil = Image.fromarray(X[i].numpy(), mode="F").resize((10, 10), Image.BILINEAR)
        torch.testing.assert_close(out[i], torch.tensor(np.array(pil)), atol=1e-5, rtol=0)


def test_initial_weights_have_the_std_asked_for_and_zero_bias():
    from softmax_lab.maths.softmax_regression import initial_weights

    torch.manual_seed(0)
    W, b = initial_weights(784, 10, 0.01)
    assert W.shape == (784, 10) and W.std().item() == pytest.approx(0.01, rel=0.05) and b.tolist() == [0.0] * 10


def test_scratch_sgd_is_plain_momentum_by_default_as_torch():
    from softmax_lab.maths.sgd import ScratchSGD

    p = torch.zeros(3)
    sgd = ScratchSGD([p], lr=0.1, momentum=0.9)
    ref = torch.zeros(3, requires_grad=True)
    torch_sgd = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    for g in (torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 0.5, -1.0])):
        sgd.step([p], [g])
        ref.grad = g.clone()
        torch_sgd.step()
    torch.testing.assert_close(p, ref.detach(), rtol=0, atol=1e-7)


def test_a_loss_class_path_gives_its_loss_name():
    for name, cls in LOSSES.items():
        assert name_of(f"{cls.__module__}.{cls.__name__}") == name
        assert name_of(cls.__name__) == name  # a bare class name
    assert name_of("my_losses.focal.Focal") == "focal"  # a class of the user's own: its name, lower case
