"""matplotlib without a display (Agg), and saving a figure whole (files.py) at a fixed pixel size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from softmax_lab.files import replacing  # noqa: E402

DPI = 100


def save(fig, path: Path) -> Path:
    """Write the figure whole or not at all (a temporary file renamed), then close it."""
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
