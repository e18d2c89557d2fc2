"""The textbook's claims, checked against independent oracles: impl=func (torch.func) computes what autograd and
torch.optim compute; the three impls take the same steps from the real entry point; the power iteration finds the
Hessian's top eigenvalue; logistic regression is two-class softmax, step by step."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from softmax_lab.data.idx import read_split
from softmax_lab.data.splits import keep_classes
from softmax_lab.errors import ConfigError
from softmax_lab.maths.functional import logits, loss_grads, sgd_update
from softmax_lab.maths.losses import LOSSES, CrossEntropy
from softmax_lab.maths.sharpness import full_batch_loss, top_eigenvalue
from softmax_lab.maths.softmax_regression import linear_weights, make_nn_model
from softmax_lab.steps.lightning_module import SoftmaxRegressionModule


def batch(n=96, inputs=784, C=10, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, inputs, generator=g, dtype=dtype), torch.randint(0, C, (n,), generator=g)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_func_gradients_are_autograds_through_torch_nn(name):
    torch.manual_seed(0)
    net, loss = make_nn_model(), LOSSES[name]()
    with torch.no_grad():
        net[1].weight.mul_(30)  # logits of a few units: every branch of every loss is taken
    X, y = batch()
    loss.torch_value(net(X), y).backward()
    params = {"W": net[1].weight.detach().T, "b": net[1].bias.detach()}
    grads, (_, (value, O)) = loss_grads(params, X, y, loss)
    assert not O.requires_grad and value.shape == ()
    if name == "bce":  # torch.func runs binary_cross_entropy_with_logits as its decomposition: rounding differs
        torch.testing.assert_close(grads["W"], net[1].weight.grad.T, rtol=1e-5, atol=1e-8)
    else:  # the same kernels as nn's autograd, in the same order
        assert torch.equal(grads["W"], net[1].weight.grad.T) and torch.equal(grads["b"], net[1].bias.grad)


def test_func_scale_is_lightnings_division_by_the_accumulation_window():
    X, y = batch()
    params = {"W": torch.randn(784, 10) * 0.1, "b": torch.zeros(10)}
    W = params["W"].clone().requires_grad_()
    (CrossEntropy().torch_value(torch.addmm(params["b"], X, W), y) / 3).backward()
    grads, _ = loss_grads(params, X, y, CrossEntropy(), 1 / 3)
    assert torch.equal(grads["W"], W.grad)


@pytest.mark.parametrize("momentum, nesterov, weight_decay", [(0.0, False, 0.0), (0.9, False, 1e-3),
                                                               (0.9, True, 1e-2)])
def test_sgd_update_takes_torch_optim_sgds_steps_bit_for_bit(momentum, nesterov, weight_decay):
    g = torch.Generator().manual_seed(1)
    start = {"W": torch.randn(784, 10, generator=g), "b": torch.randn(10, generator=g)}
    theirs = [p.clone().requires_grad_() for p in start.values()]
    opt = torch.optim.SGD(theirs, lr=0.05, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    params, velocity = start, ({k: torch.zeros_like(p) for k, p in start.items()} if momentum else None)
    for _ in range(5):
        grads = {k: torch.randn(p.shape, generator=g) for k, p in start.items()}
        for p, k in zip(theirs, grads, strict=True):
            p.grad = grads[k].clone()
        opt.step()
        params, velocity = sgd_update(params, grads, velocity, 0.05, momentum, weight_decay, nesterov)
    assert all(torch.equal(params[k], p.detach()) for k, p in zip(params, theirs, strict=True))
    assert start["W"] is not params["W"] and not torch.equal(start["W"], params["W"])  # pure: start untouched


def test_func_takes_sgd_options_only_and_says_so():
    with pytest.raises(ConfigError, match=r"impl=func trains with its own SGD, so optimizer=torch.optim.Adam .*"
                                          r"impl=nn"):
        SoftmaxRegressionModule(impl="func", optimizer={"_target_": "torch.optim.Adam", "lr": 1e-3})
    m = SoftmaxRegressionModule(impl="func")
    assert not any(p.requires_grad for p in m.parameters()) and {"net.W", "net.b"} <= set(m.state_dict())


# ---------------------------------------------------------------------------------------------
# The stability edge


@pytest.mark.parametrize("name", ["ce", "mse", "huber", "bce", "margin"])
def test_power_iteration_finds_the_top_eigenvalue_of_the_explicit_hessian(name):
    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(64, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (64,), generator=g)
    params = {"W": torch.randn(6, 3, generator=g, dtype=torch.float64), "b": torch.randn(3, generator=g,
                                                                                         dtype=torch.float64)}
    loss_of = full_batch_loss(LOSSES[name](), X, y, chunk=24)  # chunks of 24, 24 and 16: weighted as one mean

    def flat_loss(theta):
        return loss_of({"W": theta[:18].reshape(6, 3), "b": theta[18:]})

    H = torch.func.hessian(flat_loss)(torch.cat([params["W"].flatten(), params["b"]]))
    expected = torch.linalg.eigvalsh(H).max().item()
    found = top_eigenvalue(loss_of, params, iters=2000, tol=1e-12)
    assert found == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert (expected > 0.01) == (name != "margin")  # piecewise linear: no curvature where it is differentiable


def test_cross_entropys_edge_at_zero_is_a_tenth_of_the_input_second_moment():
    # at W = 0 every class has p = 1/C, so H = (diag(p) - p p^T) (x) E[x x^T]: lambda_max = 0.1 * that of E[x~ x~^T]
    X, y = batch(n=200, inputs=12)
    Xb = torch.cat([X, torch.ones(len(X), 1)], dim=1).double()
    second_moment = torch.linalg.eigvalsh(Xb.T @ Xb / len(X)).max().item()
    found = top_eigenvalue(full_batch_loss(CrossEntropy(), X, y), {"W": torch.zeros(12, 10), "b": torch.zeros(10)},
                           iters=500, tol=1e-9)
    assert found == pytest.approx(0.1 * second_moment, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Logistic regression is two-class softmax


@pytest.mark.parametrize("rate_factor, same", [(2.0, True), (1.0, False)], ids=["twice-the-rate", "same-rate"])
def test_logistic_regression_is_two_class_softmax_step_by_step(tiny_data, rate_factor, same):
    """data.classes=[a,b]: softmax over (o0, o1) is sigmoid(o1 - o0). Started from w = w1 - w0, a logistic
    model (one output, binary cross-entropy, torch.nn and torch.optim as the oracle) trained at twice the
    softmax rate gives the same probabilities at every step: each softmax step moves w1 and w0 by equal and
    opposite amounts, so w moves twice as far. At the same rate it does not."""
    X, y = read_split(tiny_data / "train-images-idx3-ubyte.gz", tiny_data / "train-labels-idx1-ubyte.gz")
    X, y = keep_classes(X.reshape(len(X), -1).double() / 255, y.long(), (0, 6))  # as data.classes=[0,6] does
    g = torch.Generator().manual_seed(0)
    softmax_params = {"W": torch.randn(784, 2, generator=g, dtype=torch.float64) * 0.01,
                      "b": torch.zeros(2, dtype=torch.float64)}
    logistic = torch.nn.Linear(784, 1).double()
    with torch.no_grad():
        logistic.weight.copy_((softmax_params["W"][:, 1] - softmax_params["W"][:, 0])[None])
        logistic.bias.copy_(softmax_params["b"][1] - softmax_params["b"][0])
    lr = 0.5
    opt = torch.optim.SGD(logistic.parameters(), lr=rate_factor * lr)
    gaps = []
    for i in [*range(0, len(X) - 15, 16)] * 3:  # three epochs of minibatches of 16, every step compared
        Xb, yb = X[i : i + 16], y[i : i + 16]
        grads, _ = loss_grads(softmax_params, Xb, yb, CrossEntropy())  # impl=func's step
        softmax_params, _ = sgd_update(softmax_params, grads, None, lr)
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(logistic(Xb).squeeze(1), yb.double()).backward()
        opt.step()
        with torch.no_grad():
            p_softmax = logits(softmax_params, X).softmax(dim=1)[:, 1]
            p_logistic = torch.sigmoid(logistic(X).squeeze(1))
        gaps.append((p_softmax - p_logistic).abs().max().item())
    assert len(gaps) >= 12
    assert (max(gaps) < 1e-12) == same, gaps


# ---------------------------------------------------------------------------------------------
# Three implementations, one trajectory: the real entry point, the real data


BIT_IDENTICAL = {  # which impls take bit-identical steps; the others agree within 1e-6 on every parameter
    "ce": [("nn", "func")],  # scratch's softmax rounds apart from the exp inside torch's kernels by ~1e-9 a step
    "bce": [("scratch", "nn")],  # torch.func decomposes binary_cross_entropy_with_logits
    **{name: [("scratch", "nn"), ("scratch", "func"), ("nn", "func")] for name in ("mse", "margin", "huber", "l1")},
}


@pytest.mark.slow
def test_scratch_nn_and_func_train_the_same_weights_from_the_command_line(real_data, tmp_path):
    # one loss of each kind: ce (scratch apart by rounding), bce (func apart), mse and margin (all bit-identical;
    # huber and l1 take mse's path); one epoch of the real data, 215 steps
    losses = ("ce", "bce", "mse", "margin")
    r = run_cli(["-m", "loss=" + ",".join(losses), "impl=scratch,nn,func", "trainer.max_epochs=1",
                 "logger=none", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp_path}"],
                timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    found = {}
    for job in tmp_path.iterdir():
        if (job / "checkpoints" / "last.ckpt").exists():
            ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
            hp = ckpt["hyper_parameters"]
            name = next(n for n, cls in LOSSES.items() if hp["loss"]["_target_"].endswith("." + cls.__name__))
            found[name, hp["impl"]] = torch.cat([t.flatten() for t in linear_weights(ckpt["state_dict"], hp["impl"])])
    assert len(found) == 12, sorted(found)
    for name in losses:
        for a, b in itertools.combinations(("scratch", "nn", "func"), 2):
            gap = (found[name, a] - found[name, b]).abs().max().item()
            assert gap <= 1e-6, (name, a, b, gap)
            if (a, b) in BIT_IDENTICAL[name]:
                assert gap == 0.0, (name, a, b, gap)


def test_every_impl_has_a_config_and_a_row_in_the_docs():
    root = Path(__file__).parents[1]
    impls = sorted(p.stem for p in (root / "conf" / "impl").glob("*.yaml"))
    assert impls == ["func", "nn", "scratch"]
    science = (root / "docs" / "science.md").read_text()
    assert all(f"| `impl={impl}`" in science for impl in impls)
    readme = (root / "README.md").read_text()
    assert all(f"`impl={impl}`" in readme for impl in impls)


def test_make_figures_sharpness_table_and_picture(tmp_path):
    from softmax_lab.jobs.sharpness_study import edge_table, sharpness_picture

    X, y = batch(n=512)
    table = edge_table(X, y, epochs=1)
    rows = table.splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == [f"`{name}`" for name in LOSSES]
    by_loss = {r.split("|")[1].strip(" `"): [c.strip() for c in r.split("|")[2:-1]] for r in rows}
    assert by_loss["margin"][1] == "none (H = 0)" and by_loss["margin"][-1] == "no curvature: no edge"
    Xb = torch.cat([X, torch.ones(len(X), 1)], dim=1).double()  # the squared loss's Hessian is E[x x^T] (x) I
    assert float(by_loss["mse"][0]) == pytest.approx(torch.linalg.eigvalsh(Xb.T @ Xb / len(X)).max().item(), rel=1e-3)
    path = sharpness_picture(tmp_path / "sharpness.png", X, y, rates=(0.1, 0.3), epochs=1, every=1)
    assert path.stat().st_size > 10_000
