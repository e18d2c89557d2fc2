"""A user's own image files, made what the model was trained on (predict.py).

An image becomes a 28x28 grey image with the object light on a dark background (a light background
is inverted), the object trimmed and scaled so its longer side fills the 28 pixels and centred, as
Fashion-MNIST's images were made (Xiao et al., 2017). An image already 28x28 grey on a dark
background is taken as it is. 16-bit images are scaled, a transparent background is made the shade that sets the
object off, a blank image is refused; each conversion is said on the file's line.
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
    return prepare_image(path)[0]


def prepare_image(path: Path) -> tuple[np.ndarray, list[str]]:
    """The image as Fashion-MNIST draws one, and each conversion made on the way, in words for the file's line."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    notes = []
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            grey = _grey(img, notes)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{path.name}: not a readable image ({str(e).splitlines()[0][:120]})") from e
    if grey.size == 0:
        raise ImageError(f"{path.name}: an empty image")
    if float(np.percentile(grey, 99.5) - np.percentile(grey, 0.5)) < BLANK:
        raise ImageError(f"{path.name}: a blank image (one shade, {grey.mean():.2f}): nothing to classify")
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 0.5:  # a light background: Fashion-MNIST's objects are light on black
        grey = 1.0 - grey
        notes.append("inverted (light background)")
    if grey.shape == (SIDE, SIDE):
        return grey, notes
    h, w = grey.shape
    return fit_to_square(grey, notes), notes + [f"{w}x{h} cropped to the object, scaled to {SIDE}x{SIDE}"]


BLANK = 0.05  # an image whose shades span less than this (of black to white) shows nothing


def _grey(img, notes: list[str]) -> np.ndarray:
    """Grey in [0, 1]: 16-bit and float images scaled (not clipped), a transparent background made the colour that
    sets the object off, light objects on black and dark ones on white."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        raw = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or raw.max() > 255 else 255.0
        if img.mode == "F":
            top = 1.0 if raw.max() <= 1.0 else float(raw.max())
        notes.append(f"{img.mode} pixels scaled from 0..{top:g}")
        return np.clip(raw / top, 0.0, 1.0).astype(np.float32)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
        shade = np.asarray(rgba.convert("L"), dtype=np.float32) / 255
        if alpha.min() < 1.0:
            light = float((shade * alpha).sum() / max(alpha.sum(), 1e-6)) > 0.5
            ground = "black" if light else "white"
            rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, ground), rgba)
            notes.append(f"transparent background made {ground} ({'light' if light else 'dark'} object)")
        return np.asarray(rgba.convert("L"), dtype=np.float32) / 255
    return np.asarray(img.convert("L"), dtype=np.float32) / 255


def fit_to_square(grey: np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """Trim the dark background, scale the longer side to 28 and centre on black, as Fashion-MNIST was made. The
    object is found on a 3x3 median of the image (a little sensor noise is not an object), from its background's
    level, and its box leaves out the outermost 0.5% of its pixels on each side (stray specks)."""
    from PIL import Image, ImageFilter

    smooth = np.asarray(Image.fromarray((grey * 255).astype(np.uint8)).filter(ImageFilter.MedianFilter(3)),
                        dtype=np.float32) / 255
    border = np.concatenate([smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1]])
    ground, top = float(np.median(border)), float(np.percentile(smooth, 99.5))
    if ground > 0.05:  # a grey background, not black: levelled as Fashion-MNIST's is
        grey = np.clip((grey - ground) / max(1.0 - ground, 1e-6), 0.0, 1.0)
        if notes is not None:
            notes.append(f"background {ground:.2f} levelled to black")
    rows, cols = np.nonzero(smooth > ground + 0.25 * max(top - ground, 0.1))
    if len(rows):
        r0, r1 = np.percentile(rows, [0.5, 99.5]).round().astype(int)
        c0, c1 = np.percentile(cols, [0.5, 99.5]).round().astype(int)
        grey = grey[r0 : r1 + 1, c0 : c1 + 1]
    h, w = grey.shape
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = Image.fromarray((grey * 255).astype(np.uint8)).resize(size, Image.LANCZOS)
    canvas = Image.new("L", (SIDE, SIDE), 0)
    canvas.paste(small, ((SIDE - size[0]) // 2, (SIDE - size[1]) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255
