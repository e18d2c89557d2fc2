"""predict(cfg): the textbook's predict_ch3 for a user's own images (src/predict.py, conf/predict.yaml).

An image is made what the model was trained on: 28x28 grey, the object light on a dark background
(a light background is inverted), the object trimmed and scaled so its longer side fills the 28 pixels
and centred, as Fashion-MNIST's images were made (Xiao et al., 2017). An image already 28x28 grey on a
dark background is taken as it is. One line per file: the predicted class, its probability and the
top-k beneath it; a file that cannot be read gets one line saying why, and the others are still predicted.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from softmax_lab.checkpoints import read_checkpoint
from softmax_lab.data import FashionMNISTDataModule
from softmax_lab.errors import ConfigError, UserError
from softmax_lab.mlflow_model import SoftmaxRegressionPyfunc, pyfunc_of

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
SIDE = 28


class ImageError(UserError):
    """One image file cannot be used; the others still are."""


def model_from_checkpoint(path) -> tuple[SoftmaxRegressionPyfunc, FashionMNISTDataModule]:
    """The checkpoint's model with its data preparation (the same predictor the run logged to MLflow), and the
    data module it was trained with."""
    from softmax_lab.module import SoftmaxRegressionModule

    ckpt = read_checkpoint(path)
    datamodule = FashionMNISTDataModule(**ckpt["datamodule_hyper_parameters"])
    stats = ckpt.get(type(datamodule).__qualname__)  # the data module's state: the training split's statistics
    if datamodule.normalize and not stats:
        raise ConfigError("this checkpoint normalises pixels but does not carry their statistics (it predates them). "
                          "Fix: train it again, or use a checkpoint trained with data.normalize=false.")
    datamodule.load_state_dict(stats or {})
    module = SoftmaxRegressionModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    return pyfunc_of(module, datamodule), datamodule


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
        raise ImageError(f"{path.name}: not a readable image ({str(e).splitlines()[0][:120]})") from None
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


def prediction_lines(row, class_names: list[str], k: int) -> str:
    """'sneaker (0.912)' and, indented beneath, the top-k: a line per file, its alternatives under it."""
    probs = np.array([row[f"p_{n.replace(' ', '_')}"] for n in class_names])
    order = probs.argsort()[::-1][:k]
    return f"{row['class_name']} ({row['probability']:.3f})\n    top-{k}: " + ", ".join(
        f"{class_names[i]} {probs[i]:.3f}" for i in order)


def predict(cfg: DictConfig) -> dict[str, float]:
    from softmax_lab import plots

    for key in ("ckpt_path", "images"):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise ConfigError(f"{key} is required, e.g. `python src/predict.py ckpt_path=outputs/runs/<date>/<time>/"
                              "checkpoints/best-epoch07.ckpt images=shoe.png` (or images=test:18).")
    model, datamodule = model_from_checkpoint(cfg.ckpt_path)
    names = model.class_names
    if not (isinstance(cfg.top_k, int) and not isinstance(cfg.top_k, bool) and 1 <= cfg.top_k <= len(names)):
        raise ConfigError(f"top_k={cfg.top_k!r} is not allowed: expected an integer in 1..{len(names)} (e.g. top_k=3).")
    out = Path(cfg.paths.output_dir)
    spec = str(cfg.images)
    if spec.startswith("test:"):
        return predict_test_images(cfg, datamodule, model, spec, out)
    labels, images = [], []
    for path in image_files(spec):
        try:
            images.append(load_image(path))
            labels.append(path.name)
        except ImageError as e:
            print(f"{e}", flush=True)
    if not images:
        raise ConfigError(f"images={spec}: none of the files could be read as an image.")
    X = np.stack(images).reshape(len(images), -1)
    rows = [row for _, row in model.predict(None, X).iterrows()]
    for name, row in zip(labels, rows):
        print(f"{name}: {prediction_lines(row, names, cfg.top_k)}", flush=True)
    titles = [f"{n[:14]}\n{row['class_name']} {row['probability']:.2f}" for n, row in zip(labels, rows)]
    grid = plots.image_grid(torch.from_numpy(np.stack(images)), titles, out / "predictions.png",
                            rows=-(-len(images) // 9), cols=min(9, len(images)), suptitle="What the model saw and said")
    print(f"the images as the model saw them, with its predictions: {grid}", flush=True)
    return {"predicted": float(len(images))}


def predict_test_images(cfg, datamodule, model, spec: str, out: Path) -> dict[str, float]:
    """images=test:N: the first N official test images in the textbook's grid, true and predicted labels."""
    from softmax_lab import plots

    try:
        n = int(spec.split(":", 1)[1])
        assert n >= 1
    except (ValueError, AssertionError):
        raise ConfigError(f"images={spec}: expected test:N with N >= 1, e.g. images=test:18.") from None
    if cfg.data_dir:
        datamodule.data_dir = cfg.data_dir
    X, y = datamodule.raw_test_images(n)
    result = model.predict(None, X.reshape(len(X), -1).numpy())
    preds = torch.tensor(result["class_id"].to_numpy())
    names = model.class_names
    for i, (_, row) in enumerate(result.iterrows()):
        print(f"test image {i} (true: {names[int(y[i])]}): {prediction_lines(row, names, cfg.top_k)}", flush=True)
    grid = plots.predictions_grid(X, y, preds, names, out / "predictions.png", cols=min(9, len(X)))
    right = int((preds == y).sum())
    print(f"{right} of {len(X)} right; the grid (true / predicted, mistakes in red): {grid}", flush=True)
    return {"predicted": float(len(X)), "accuracy": right / len(X)}
