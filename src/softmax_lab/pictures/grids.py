"""Images in a grid with a title each, as the textbook draws them (d2l show_images, predict_ch3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from softmax_lab.pictures.canvas import DPI, plt, save

CELL_W, CELL_H, TITLE_H = 150, 190, 40  # pixels of one image's cell and of its title band (DPI 100)


def mosaic(images, rows: int, cols: int, top: int) -> tuple[np.ndarray, int]:
    """One (rows * CELL_H, cols * CELL_W) grey canvas, white between cells and in a `top` band, each image scaled to
    its cell, and the height of a row: one imshow instead of rows x cols axes (a tenth of the drawing time)."""
    row_h = (rows * CELL_H - top) // rows
    side = min(CELL_W - 10, row_h - TITLE_H - 6)
    canvas = np.ones((rows * CELL_H, cols * CELL_W), dtype=np.float32)
    for i, img in enumerate(images[: rows * cols]):
        img = torch.as_tensor(np.asarray(img, dtype=np.float32))
        img = F.interpolate(img[None, None], size=(side, side), mode="nearest")[0, 0].clamp(0, 1).numpy()
        r, c = divmod(i, cols)
        y, x = top + r * row_h + TITLE_H, c * CELL_W + (CELL_W - side) // 2
        canvas[y : y + side, x : x + side] = img
    return canvas, row_h


def image_grid(images, titles, path: Path, rows: int = 2, cols: int = 9, title_colors=None, suptitle=None) -> Path:
    """Images in a rows x cols grid with a title each (d2l show_images)."""
    top = 30 if suptitle else 0
    canvas, row_h = mosaic(images, rows, cols, top)
    height, width = canvas.shape
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for i, title in enumerate(titles[: rows * cols]):
        r, c = divmod(i, cols)
        ax.text(c * CELL_W + CELL_W / 2, top + r * row_h + TITLE_H - 3, title, ha="center", va="bottom",
                fontsize=8, color=title_colors[i] if title_colors else "black")
    if suptitle:
        ax.text(width / 2, top / 2 + 2, suptitle, ha="center", va="center", fontsize=10)
    return save(fig, path)


def samples_grid(images, labels, class_names, path: Path) -> Path:
    """18 training images with their text labels."""
    return image_grid(images, [class_names[int(y)] for y in labels], path, suptitle="Training samples")


def predictions_grid(images, labels, preds, class_names, path: Path, cols: int = 9, confidences=None) -> Path:
    """Test images titled true / predicted with the model's probability for it; mistakes in red (d2l predict_ch3)."""
    confidences = [None] * len(preds) if confidences is None else [float(c) for c in confidences]
    titles = [f"{class_names[int(t)]}\n{class_names[int(p)]}" + (f" {c:.0%}" if c is not None else "")
              for t, p, c in zip(labels, preds, confidences)]
    colors = ["black" if int(t) == int(p) else "red" for t, p in zip(labels, preds)]
    n_wrong = colors.count("red")
    said = "true / predicted, its probability" if confidences[0] is not None else "true / predicted"
    return image_grid(images, titles, path, rows=-(-len(titles) // cols), cols=cols, title_colors=colors,
                      suptitle=f"Test predictions ({said}): {n_wrong} of {len(titles)} wrong, in red")
