"""`make figures`: the loss zoo (docs/loss_zoo.png), drawn from the maths/losses.py the model trains with.

For each loss, one example of C = 10 classes, every logit 0 but one: the loss, its likelihood
e^-l (normalised to peak at 1, as the textbook draws the Gaussian and Laplace likelihoods behind L2
and L1) and its gradient, as that one logit moves. Top row: the true class's logit o_y; bottom
row: a wrong class's logit o_j. Each curve is shifted so its minimum over the range is 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from softmax_lab.config import PROJECT_ROOT
from softmax_lab.maths.losses import LOSSES
from softmax_lab.pictures.canvas import plt, save

C = 10
STYLES = {"ce": "C0-", "mse": "C1--", "margin": "C2-.", "huber": "C3-", "l1": "C4:", "bce": "C5-"}


def one_logit_curves(name: str, logit: int, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, gradient) of sample (o, y=0) as o[logit] runs over t, every other logit 0, from losses.py."""
    loss = LOSSES[name]()
    O = torch.zeros(len(t), C, dtype=torch.float64)
    O[:, logit] = t
    y = torch.zeros(len(t), dtype=torch.long)
    per_sample = torch.stack([loss.value(O[i : i + 1], y[i : i + 1]) for i in range(len(t))])
    gradient = loss.grad(O, y)[:, logit] * len(t)  # grad() is of the batch mean: back to one sample's
    return per_sample, gradient


def loss_zoo(path: Path) -> Path:
    """Each loss and its gradient along the true class's logit and a wrong class's: the chapter's loss-zoo figure."""
    t = torch.linspace(-4, 4, 321, dtype=torch.float64)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), sharex=True)
    rows = [(0, "the true class's logit $o_y$ (target 1)"), (1, "a wrong class's logit $o_j$ (target 0)")]
    for r, (logit, what) in enumerate(rows):
        ax_loss, ax_like, ax_grad = axes[r]
        for name in LOSSES:
            loss, gradient = one_logit_curves(name, logit, t)
            loss = loss - loss.min()
            ax_loss.plot(t, loss, STYLES[name], label=name)
            ax_like.plot(t, torch.exp(-loss), STYLES[name], label=name)
            ax_grad.plot(t, gradient, STYLES[name], label=name)
        ax_loss.set_ylim(-0.2, 6)
        ax_like.set_ylim(-0.05, 1.05)
        ax_grad.axhline(0, color="gray", linewidth=0.5)
        if logit == 0:  # margin's gradient is -9 below the margin (all nine others violate): clip, and say so
            ax_grad.set_ylim(-4, 3.5)
            ax_grad.annotate("margin: -9 for $o_y < 1$\n(all nine others violate)", xy=(-2.5, -4), xytext=(-3.9, -3.2),
                             fontsize=8, color="C2", arrowprops={"arrowstyle": "->", "color": "C2"})
        for ax, title in zip(axes[r], ("loss $l$ (shifted to min 0)", "likelihood $e^{-l}$", "gradient $dl/do$")):
            ax.set_title(f"{title}\nagainst {what}", fontsize=9)
            ax.grid(alpha=0.3)
        for ax in axes[r]:
            ax.set_xlabel(f"${'o_y' if logit == 0 else 'o_j'}$")
    axes[0][0].legend(ncol=2, fontsize=8)
    fig.suptitle("The loss zoo: one logit moves, the other nine stay at 0 (C = 10; defaults: margin 1, delta 1)",
                 fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(PROJECT_ROOT / "docs" / "loss_zoo.png"))
    a = ap.parse_args(argv)
    print(f"written: {loss_zoo(Path(a.out))}")


if __name__ == "__main__":
    main()
