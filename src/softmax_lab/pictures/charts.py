"""The run's charts: confusion matrix, learning curves, per-class accuracy, reliability diagram; a sweep's chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from softmax_lab.pictures.canvas import plt, save


def confusion_matrix(counts, class_names, path: Path, title: str = "Test confusion matrix") -> Path:
    """Counts per (true, predicted) class, coloured by the share of each true class."""
    counts = np.asarray(counts)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title} (accuracy {accuracy:.4f})")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.subplots_adjust(left=0.14, right=0.9, bottom=0.16, top=0.95)  # fixed: tight_layout measures every label
    return save(fig, path)


def learning_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Loss (left axis: train and val) and accuracy (right axis: train and val) per epoch, the best epoch by
    validation accuracy marked (the checkpoint the test used)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    acc_ax = ax.twinx()
    epochs = [h["epoch"] + 1 for h in history]
    lines = []
    for axes, key, style in ((ax, "train/loss", "C0-"), (ax, "val/loss", "C0--"), (acc_ax, "train/acc", "C1-"),
                             (acc_ax, "val/acc", "C1--")):
        values = [h.get(key, np.nan) for h in history]
        lines += axes.plot(epochs, values, style, label=key.replace("/", " "), marker="o", markersize=3)
    val = [h.get("val/acc", np.nan) for h in history]
    if not all(np.isnan(val)):
        best = int(np.nanargmax(val))
        lines.append(acc_ax.axvline(epochs[best], color="gray", linestyle=":", linewidth=1,
                                    label=f"best val acc {val[best]:.4f} (epoch {epochs[best]})"))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="C0")
    acc_ax.set_ylabel("accuracy", color="C1")
    ax.set_xlim(0.5, max(epochs + [1]) + 0.5)
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=3, fontsize=8.5)  # off the lines
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.11, right=0.88, bottom=0.27, top=0.92)
    return save(fig, path)


def per_class_accuracy(accuracies, class_names, path: Path, title: str = "") -> Path:
    """Test accuracy of each class as horizontal bars, the overall mean as a line: which classes the model
    confuses (shirt, pullover, coat) at a glance."""
    acc = np.asarray(accuracies, dtype=float)
    order = np.argsort(acc)
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(acc) + 1.3))
    ax.barh(range(len(acc)), acc[order], color=["C3" if a < acc.mean() else "C0" for a in acc[order]])
    ax.set_yticks(range(len(acc)), [class_names[i] for i in order])
    for k, a in enumerate(acc[order]):
        inside = a > 0.85
        ax.text(a - 0.01 if inside else a + 0.01, k, f"{a:.3f}", va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside else "black")
    ax.axvline(acc.mean(), color="gray", linestyle="--", linewidth=1, label=f"mean {acc.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Per-class test accuracy, {title}" if title else "Per-class test accuracy", fontsize=9)
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.19, right=0.97, bottom=0.5 / height, top=1 - 0.35 / height)
    return save(fig, path)


def reliability_diagram(bins: dict, ece: float, path: Path, title: str = "") -> Path:
    """Accuracy against confidence per bin (top label, equal widths), the gap to the diagonal shaded, the share
    of test images per bin below: where a model is over- or under-confident (Guo et al., 2017)."""
    count = np.asarray(bins["bin_count"], dtype=float)
    acc, conf = np.asarray(bins["bin_acc"], dtype=float), np.asarray(bins["bin_conf"], dtype=float)
    k = len(count)
    edges = np.linspace(0, 1, k + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / k
    used = count > 0
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfectly calibrated")
    ax.bar(centers[used], acc[used], width, color="C0", edgecolor="white", label="accuracy")
    ax.bar(centers[used], conf[used] - acc[used], width, bottom=acc[used], color="none", hatch="///",
           edgecolor="C3", linewidth=0, label="gap: confidence - accuracy")
    ax.plot(centers[used], conf[used], "_", color="C3", markersize=14, markeredgewidth=2, label="mean confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    # the legend goes where no bar is: upper left for a calibrated model, lower right for an under-confident one
    # (mse: every prediction below 0.5 confidence), else above the axes
    left = used & (centers < 0.5)
    if not np.any(np.maximum(acc, conf)[left] > 0.6):
        ax.legend(loc="upper left", fontsize=8)
    elif not np.any(used & (centers > 0.5)):
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.06), ncols=2, fontsize=7)
    ax.set_title((f"{title}: " if title else "") + f"ECE {ece:.4f}", fontsize=9)
    hist.bar(centers, count / max(count.sum(), 1), width, color="C7", edgecolor="white")
    hist.set_xlabel("confidence (softmax probability of the predicted class)")
    hist.set_ylabel("share")
    fig.subplots_adjust(left=0.14, right=0.97, top=0.94, bottom=0.09, hspace=0.12)  # fixed: tight_layout is slow
    return save(fig, path)


def sweep_chart(rows: list[dict], path: Path) -> Path:
    """Test accuracy (left) and calibration error (right) per loss (groups) and implementation (bars), side by
    side; failed jobs marked. The accuracy axis starts near the lowest result, so the differences between jobs
    show; it says where it starts. The legend sits beside the axes, never over a bar."""
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / max(len(impls), 1)
    finished = [r for r in rows if r["status"] == "FINISHED" and r["test_acc"] is not None]
    accs = [r["test_acc"] for r in finished]
    low = max(0.0, np.floor((min(accs) - 0.03) * 50) / 50) if accs else 0.0
    high = min(1.0, max(accs) + 0.02) if accs else 1.0
    eces = [r["test_ece"] for r in finished if r.get("test_ece") is not None]
    top_ece = max(eces + [0.05]) * 1.15
    fig_width = max(9, 1.3 * len(losses) * max(len(impls), 1))
    fig, (ax, ax_ece) = plt.subplots(1, 2, figsize=(fig_width, 4.5))
    # a bar's width in points (each axes about 0.38 of the figure): a label wider than its bar stands upright
    small = fig_width * 72 * 0.38 / max(len(losses), 1) * width < 36
    for k, impl in enumerate(impls):
        for i, loss in enumerate(losses):
            match = [r for r in rows if r["loss"] == loss and r["impl"] == impl]
            if not match:
                continue
            best = max(match, key=lambda r: r["test_acc"] if r["test_acc"] is not None else -1)
            x = i + (k - (len(impls) - 1) / 2) * width
            ok = best["status"] == "FINISHED" and best["test_acc"] is not None
            acc = best["test_acc"] if ok else low
            ax.bar(x, acc - low, width, bottom=low, color=f"C{k}")
            ax.text(x, (acc if ok else low) + (high - low) * 0.01, f"{acc:.4f}" if ok else best["status"],
                    ha="center", va="bottom", fontsize=8, rotation=90 if small else 0)
            ece = best.get("test_ece") if ok else None
            ax_ece.bar(x, ece or 0.0, width, color=f"C{k}", label=impl if i == 0 else None)
            ax_ece.text(x, (ece or 0.0) + top_ece * 0.01, f"{ece:.3f}" if ece is not None else best["status"],
                        ha="center", va="bottom", fontsize=8, rotation=90 if small else 0)
    for a in (ax, ax_ece):
        a.set_xticks(range(len(losses)), losses)
        a.grid(axis="y", alpha=0.3)
    ax.set_ylim(low, high + (high - low) * 0.08)
    ax.set_ylabel(f"test accuracy (axis from {low:.2f})")
    ax.set_title("Test accuracy (higher is better)")
    ax_ece.set_ylim(0, top_ece)
    ax_ece.set_ylabel("test ECE")
    ax_ece.set_title("Calibration error (lower is better)")
    ax_ece.legend(title="impl", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: never over a bar
    fig.suptitle("Sweep: each loss and implementation")
    fig.tight_layout()
    return save(fig, path)


def search_history(points: list[tuple[int, str, float | None]], weights: dict[str, float], mine: set[int],
                   path: Path, name: str) -> Path:
    """An Optuna search. Left: each trial's val/acc_best by trial number (points: (number, state, value); pruned ones
    at their last report), the best so far as a line, this search's trials filled. Right: the importance of each
    searched key."""
    fig, (ax, imp) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    done = [(n, v) for n, state, v in points if state == "COMPLETE" and v is not None]
    if done:
        ax.scatter([n for n, _ in done], [v for _, v in done], marker="o", edgecolors="C0", label="complete", zorder=3,
                   c=["C0" if n in mine else "none" for n, _ in done])
    pruned = [(n, v) for n, state, v in points if state == "PRUNED" and v is not None]
    if pruned:  # a cross has no face
        ax.scatter([n for n, _ in pruned], [v for _, v in pruned], marker="x", c="C1", label="pruned (last report)",
                   zorder=3)
    if done:
        best = np.maximum.accumulate([v for _, v in sorted(done)])
        ax.step([n for n, _ in sorted(done)], best, where="post", color="C2", label=f"best so far ({best[-1]:.4f})")
    for i, number in enumerate(n for n, state, _ in points if state == "FAIL"):
        ax.axvline(number, color="C3", alpha=0.3, linewidth=1, label="failed" if i == 0 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (filled: this search)")
    ax.set_ylabel("val/acc_best")
    ax.set_title(f"Optimisation history: {name}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if weights:
        keys = list(weights)[::-1]
        bars = imp.barh(keys, [weights[k] for k in keys], color="C0")
        imp.bar_label(bars, [f"{weights[k]:.2f}" for k in keys], padding=3, fontsize=8)
        imp.set_xlim(0, 1)
        imp.set_xlabel("importance (fANOVA, share of the variance)")
    else:
        imp.text(0.5, 0.5, "importances need two complete\ntrials with different values", ha="center",
                 va="center", transform=imp.transAxes)
        imp.set_xticks([])
        imp.set_yticks([])
    imp.set_title("Parameter importance", fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.14, top=0.9, wspace=0.55)
    return save(fig, path)
