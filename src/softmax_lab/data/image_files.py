"""A user's own image files, made what the model was trained on (predict.py).

An image becomes a 28x28 grey image with the object light on a dark background (a light background
is inverted), the object trimmed and scaled so its longer side fills the 28 pixels and centred, as
Fashion-MNIST's images were made (Xiao et al., 2017). An image already 28x28 grey on a dark
background is taken as it is.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from softmax_lab.errors import ConfigError, UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
SIDE = 28


class ImageError(UserError):
    """One image file cannot be used; the others still are."""


def image_files(spec: str) -> list[Path]:
    """A file, a folder's image files, or a glob's matches, sorted; ConfigError when there are none."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    elif any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    else:
        files = [path] if path.exists() else []
    if not files:
        raise ConfigError(f"images={spec}: no image files there. Fix: a file, a folder of PNG/JPEG files, a glob in "
                          "quotes ('photos/*.png'), or test:18 for official test images.")
    return files


def load_image(path: Path) -> np.ndarray:
    """An image file as Fashion-MNIST draws one: (28, 28) float32 in [0, 1], object light on dark."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:  # transparent: on white paper
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            grey = np.asarray(img.convert("L"), dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path.name}: not a readable image ({str(e).splitlines()[0][:120]})") from e
    if grey.size == 0:
        raise ImageError(f"{path.name}: an empty image")
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 0.5:  # a light background: Fashion-MNIST's objects are light on black
        grey = 1.0 - grey
    if grey.shape == (SIDE, SIDE):
        return grey
    return fit_to_square(grey)


def fit_to_square(grey: np.ndarray) -> np.ndarray:
    """Trim the dark background, scale the longer side to 28 and centre on black, as Fashion-MNIST was made."""
    from PIL import Image

    rows, cols = np.nonzero(grey > 0.1)
    if len(rows):
        grey = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    h, w = grey.shape
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray((grey * 255).astype(np.uint8)).resize(size, Image.LANCZOS)
    canvas = Image.new("L", (SIDE, SIDE), 0)
    canvas.paste(small, ((SIDE - size[0]) // 2, (SIDE - size[1]) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255
