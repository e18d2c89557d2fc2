"""`make figures`: the study of the stability edge of each loss (docs/sharpness.md) and of sharpness over training
(docs/sharpness.png, drawn by pictures/sharpness_curves.py).

Sharpness is lambda_max, the largest eigenvalue of the Hessian of the mean training loss (maths/sharpness.py). The
table gives it for each loss at the initial weights and after training 10 epochs with the loss's default rate,
next to 2 / lambda_max, the largest rate at which plain gradient descent is stable there. The picture trains
cross-entropy at three rates for 5 epochs and follows lambda_max on a fixed 5,000-image subset of the training split.

Training here takes impl=func's steps (maths/functional.py: the same gradients and updates as a run of
`python src/train.py impl=func`) over the real data in memory, batch 256, seed 42, the run's batch order.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from softmax_lab.config import PROJECT_ROOT
from softmax_lab.data.batches import TensorBatches
from softmax_lab.data.locate import locate_fashion_mnist
from softmax_lab.data.splits import prepare_splits
from softmax_lab.maths.functional import Params, loss_grads, sgd_update
from softmax_lab.maths.losses import LOSSES
from softmax_lab.maths.sharpness import full_batch_loss, top_eigenpair, top_eigenvalue
from softmax_lab.maths.softmax_regression import initial_weights
from softmax_lab.pictures.sharpness_curves import draw_sharpness_curves

SEED, BATCH = 42, 256


def default_loss(name: str):
    """The loss and its default rate as conf/loss/<name>.yaml gives them."""
    cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "loss" / f"{name}.yaml")
    return instantiate(cfg), float(cfg.default_lr)


def initial_params() -> Params:
    """The default run's initial weights (seed, init_std 0.01), as a dict for torch.func."""
    torch.manual_seed(SEED)  # as a run seeds before building its model
    W, b = initial_weights(784, 10, 0.01)
    return {"W": W, "b": b}


def train(loss_fn, lr: float, X, y, epochs: int, every: int = 0, on_step=None) -> Params:
    """impl=func's SGD steps for `epochs` epochs; on_step(step, params) every `every` steps (and at step 0)."""
    params, step = initial_params(), 0
    if on_step:
        on_step(0, params)
    for epoch in range(epochs):
        for Xb, yb in TensorBatches(X, y, BATCH, shuffle=True, seed=SEED, epoch=lambda e=epoch: e).minibatches():
            grads, _ = loss_grads(params, Xb, yb, loss_fn)
            params, _ = sgd_update(params, grads, None, lr)
            step += 1
            if on_step and every and step % every == 0:
                on_step(step, params)
    return params


def edge_table(X, y, epochs: int) -> str:
    """Per loss: lambda_max at the start and after `epochs` of training at its default rate, against 2 / lambda_max."""
    rows = [f"| `loss=` | lambda_max at the start | 2 / lambda_max | after {epochs} epochs | 2 / lambda_max "
            "| default lr | the default rate is |", "|---|---|---|---|---|---|---|"]
    for name in LOSSES:
        t0 = time.perf_counter()
        loss_fn, lr = default_loss(name)
        loss_of = full_batch_loss(loss_fn, X, y)
        start = top_eigenvalue(loss_of, initial_params(), iters=100, tol=1e-4)
        end = top_eigenvalue(loss_of, train(loss_fn, lr, X, y, epochs), iters=100, tol=1e-4)
        edge = lambda lam: f"{2 / lam:.3g}" if lam > 1e-6 else "none (H = 0)"  # noqa: E731
        side = "no curvature: no edge" if start <= 1e-6 else \
            "below the edge" if lr < 2 / start else \
            "past the edge at the start, below it at the end" if lr < 2 / max(end, 1e-12) else "past the edge"
        rows.append(f"| `{name}` | {start:.4g} | {edge(start)} | {end:.4g} | {edge(end)} | {lr:g} | {side} |")
        print(f"  {name}: lambda_max {start:.4g} -> {end:.4g}, lr {lr:g} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return "\n".join(rows) + "\n"


def sharpness_curves(X, y, rates: tuple[float, ...], epochs: int, every: int) -> list[tuple[float, list, list]]:
    """(lr, steps, lambda_max at each) of cross-entropy trained at each rate, on a fixed 5,000-image subset."""
    loss_fn = LOSSES["ce"]()
    g = torch.Generator().manual_seed(0)
    subset = torch.randperm(len(X), generator=g)[:5000]
    loss_of = full_batch_loss(loss_fn, X[subset], y[subset])
    curves = []
    for lr in rates:
        steps, values, vector = [], [], {}

        def measure(step, params, steps=steps, values=values, vector=vector):
            value, vector["v"] = top_eigenpair(loss_of, params, iters=50, tol=1e-4, start=vector.get("v"))
            steps.append(step)
            values.append(value)

        train(loss_fn, lr, X, y, epochs, every, measure)
        curves.append((lr, steps, values))
        print(f"  ce at lr {lr:g}: lambda_max {values[0]:.3g} -> {values[-1]:.3g}", flush=True)
    return curves


def sharpness_picture(path: Path, X, y, rates: tuple[float, ...], epochs: int, every: int) -> Path:
    return draw_sharpness_curves(sharpness_curves(X, y, rates, epochs, every), path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(PROJECT_ROOT / "docs"), help="folder for sharpness.md and sharpness.png")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.15, 0.3], help="ce rates in the picture")
    ap.add_argument("--picture-epochs", type=int, default=5, help="epochs of each rate in the picture")
    ap.add_argument("--every", type=int, default=50, help="steps between two measurements in the picture")
    a = ap.parse_args(argv)
    splits, _, _ = prepare_splits(locate_fashion_mnist(), 5000, 0, False, None, None)
    X, y = splits["train"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"the stability edge of each loss ({len(X)} training images, {a.epochs} epochs at the default rate):")
    table = edge_table(X, y, a.epochs)
    (out / "sharpness.md").write_text(table)
    print(table)
    print("sharpness over training:")
    print(f"written: {out / 'sharpness.md'}, "
          f"{sharpness_picture(out / 'sharpness.png', X, y, tuple(a.rates), a.picture_epochs, a.every)}")


if __name__ == "__main__":
    main()
