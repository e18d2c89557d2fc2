"""The sharpness picture of `make figures` (jobs/sharpness_study.py measures it): lambda_max of cross-entropy's
Hessian over training at each rate, with each rate's edge 2/lr dashed."""

from __future__ import annotations

from pathlib import Path

from softmax_lab.pictures.canvas import plt, save


def draw_sharpness_curves(curves: list[tuple[float, list, list]], path: Path) -> Path:
    """curves: (lr, steps, lambda_max at each step) per rate."""
    rates = [lr for lr, _, _ in curves]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (lr, steps, values) in enumerate(curves):
        ax.plot(steps, values, color=f"C{k}", label=f"lr {lr:g}")
        ax.axhline(2 / lr, color=f"C{k}", linestyle="--", linewidth=1)
        ax.text(steps[-1], 2 / lr, f" 2/lr = {2 / lr:.3g}", color=f"C{k}", va="bottom", ha="right", fontsize=8)
    ax.set_xlabel("SGD step (batch 256)")
    ax.set_ylabel("lambda_max of the Hessian (5,000 training images)")
    ax.set_title("Cross-entropy: sharpness over training; dashed, the edge 2/lr of each rate")
    ax.set_ylim(0, max(2 / min(rates), 12) * 1.1)
    ax.legend(loc="upper center", ncols=len(rates))
    return save(fig, path)
