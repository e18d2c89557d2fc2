"""The pictures of a run, as the textbook draws them (matplotlib, Agg: no display needed).

Each function writes one PNG of a fixed pixel size and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def image_grid(images, titles, path: Path, rows: int = 2, cols: int = 9, title_colors=None, suptitle=None) -> Path:
    """Images in a rows x cols grid with a title each (d2l show_images)."""
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.9 * rows))
    # fixed margins: tight_layout would measure every title and double the drawing time
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.78 if suptitle else 0.86, wspace=0.1, hspace=0.55)
    for i, ax in enumerate(np.asarray(axes).ravel()):
        ax.axis("off")
        if i < len(images):
            ax.imshow(np.asarray(images[i]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(titles[i], fontsize=8, color=(title_colors[i] if title_colors else "black"))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def samples_grid(images, labels, class_names, path: Path) -> Path:
    """18 training images with their text labels."""
    return image_grid(images, [class_names[int(y)] for y in labels], path, suptitle="Training samples")


def predictions_grid(images, labels, preds, class_names, path: Path) -> Path:
    """Test images titled true/predicted; mistakes in red (d2l predict_ch3)."""
    titles = [f"{class_names[int(t)]}\n{class_names[int(p)]}" for t, p in zip(labels, preds)]
    colors = ["black" if int(t) == int(p) else "red" for t, p in zip(labels, preds)]
    n_wrong = colors.count("red")
    return image_grid(images, titles, path, title_colors=colors,
                      suptitle=f"Test predictions (true / predicted): {n_wrong} of {len(titles)} wrong, in red")


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
    fig.tight_layout()
    return _save(fig, path)


def learning_curves(history: list[dict], path: Path, title: str = "") -> Path:
    """Train loss, train acc and val acc per epoch on one axes (d2l Animator)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] + 1 for h in history]
    for key, style in (("train/loss", "-"), ("train/acc", "m--"), ("val/acc", "g-.")):
        values = [h.get(key, np.nan) for h in history]
        ax.plot(epochs, values, style, label=key.replace("/", " "), marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, max(epochs + [1]) + 0.5)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def sweep_chart(rows: list[dict], path: Path) -> Path:
    """Test accuracy per loss (groups) and implementation (bars); failed jobs shown as 0 with 'FAILED'."""
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(losses) * max(len(impls), 1)), 4.5))
    for k, impl in enumerate(impls):
        for i, loss in enumerate(losses):
            match = [r for r in rows if r["loss"] == loss and r["impl"] == impl]
            if not match:
                continue
            best = max(match, key=lambda r: r["test_acc"] if r["test_acc"] is not None else -1)
            x = i + (k - (len(impls) - 1) / 2) * width
            acc = best["test_acc"] or 0.0
            ax.bar(x, acc, width, color=f"C{k}", label=impl if i == 0 else None)
            ax.text(x, acc + 0.01, f"{acc:.3f}" if best["status"] == "FINISHED" else best["status"],
                    ha="center", fontsize=8, rotation=90 if len(losses) * len(impls) > 12 else 0)
    ax.set_xticks(range(len(losses)), losses)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title("Sweep: test accuracy per loss and implementation")
    ax.legend(title="impl", loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
