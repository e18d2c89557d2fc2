"""predict(cfg): the textbook's predict_ch3 for a user's own images (src/predict.py, conf/predict.yaml).

Each image is made what the model was trained on (data/image_files.py). One line per file: the
predicted class and its probability, the top-k beneath it; a file that cannot be read gets one line
saying why, and the others are still predicted. Reads the checkpoint with torch alone: neither
Lightning nor MLflow is loaded, and the classifier is the one the run's MLflow model wraps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from softmax_lab.data.idx import CLASS_NAMES
from softmax_lab.data.image_files import ImageError, image_files, prepare_image
from softmax_lab.data.splits import raw_test_images
from softmax_lab.errors import ConfigError
from softmax_lab.maths.classifier import LinearClassifier, classifier_of
from softmax_lab.trainer.checkpoints import read_checkpoint

DATA_STATE = "FashionMNISTDataModule"  # where Lightning keeps the data module's state (its pixel statistics)


def classifier_from_checkpoint(path) -> tuple[LinearClassifier, dict]:
    """The checkpoint's classifier with its data preparation, and its data module's settings."""
    ckpt = read_checkpoint(path)
    data = ckpt["datamodule_hyper_parameters"]
    stats = ckpt.get(DATA_STATE) or {}
    if data.get("normalize") and not stats:
        raise ConfigError("this checkpoint normalises pixels but does not carry their statistics (it predates them). "
                          "Fix: train it again, or use a checkpoint trained with data.normalize=false.")
    names = [CLASS_NAMES[c] for c in data["classes"]] if data.get("classes") else list(CLASS_NAMES)
    classifier = classifier_of(ckpt["state_dict"], ckpt["hyper_parameters"]["impl"], names, data.get("resize"),
                               stats.get("mean", 0.0), stats.get("std", 1.0))
    return classifier, data


GRID_MAX = 90  # images in a predictions picture (10 rows of 9): more would not be readable


def prediction_lines(name: str, probs: np.ndarray, class_names: list[str], k: int, notes: list[str] = ()) -> str:
    """'sneaker (0.912)' with the conversions made to the file in brackets, and, indented beneath, the top-k: a line
    per file, its alternatives under it."""
    order = probs.argsort()[::-1][:k]
    best = order[0]
    said = f"  [{'; '.join(notes)}]" if notes else ""
    return f"{name}: {class_names[best]} ({probs[best]:.3f}){said}\n    top-{k}: " + ", ".join(
        f"{class_names[i]} {probs[i]:.3f}" for i in order)


def top_k_for(top_k, names: list[str]) -> int:
    """top_k as asked, or all the checkpoint's classes when it knows fewer (said once)."""
    if not (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        raise ConfigError(f"top_k={top_k!r} is not allowed: expected an integer >= 1 (e.g. top_k=3).")
    if top_k > len(names):
        print(f"top_k={top_k}: this checkpoint knows {len(names)} classes ({', '.join(names)}); listing all "
              f"{len(names)}", flush=True)
    return min(top_k, len(names))


def predict(cfg: DictConfig) -> dict[str, float]:
    """Classify image files (or test:N official test images) with a checkpoint: a line per file and a picture."""
    from softmax_lab.pictures import grids

    for key in ("ckpt_path", "images"):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise ConfigError(f"{key} is required, e.g. `python src/predict.py ckpt_path=outputs/runs/<date>/<time>/"
                              "checkpoints/best-epoch07.ckpt images=shoe.png` (or images=test:18).")
    classifier, data = classifier_from_checkpoint(cfg.ckpt_path)
    names = classifier.class_names
    k = top_k_for(cfg.top_k, names)
    out = Path(cfg.paths.output_dir)
    spec = str(cfg.images)
    if spec.startswith("test:"):
        return predict_test_images(cfg, data, classifier, spec, out, k)
    labels, images, notes = [], [], []
    for path in image_files(spec):
        try:
            pixels, said = prepare_image(path)
        except ImageError as e:
            print(f"{e}", flush=True)
            continue
        images.append(pixels)
        labels.append(path.name)
        notes.append(said)
    if not images:
        raise ConfigError(f"images={spec}: none of the files could be used (each line above says why).")
    P = classifier.probabilities(torch.from_numpy(np.stack(images))).numpy()
    for name, probs, said in zip(labels, P, notes):
        print(prediction_lines(name, probs, names, k, said), flush=True)
    shown = min(len(images), GRID_MAX)
    titles = [f"{n[:14]}\n{names[p.argmax()]} {p.max():.2f}" for n, p in zip(labels[:shown], P[:shown])]
    grid = grids.image_grid(torch.from_numpy(np.stack(images[:shown])), titles, out / "predictions.png",
                            rows=-(-shown // 9), cols=min(9, shown), suptitle="What the model saw and said")
    print(f"the images as the model saw them, with its predictions: {grid}" + _cap(shown, len(images)), flush=True)
    return {"predicted": float(len(images))}


def _cap(shown: int, total: int) -> str:
    return f" (the first {shown} of {total}: a bigger grid would not be readable)" if shown < total else ""


def predict_test_images(cfg, data: dict, classifier: LinearClassifier, spec: str, out: Path,
                        k: int) -> dict[str, float]:
    """images=test:N: the first N official test images in the textbook's grid, true and predicted labels."""
    from softmax_lab.pictures import grids

    try:
        n = int(spec.split(":", 1)[1])
    except ValueError as e:
        raise ConfigError(f"images={spec}: expected test:N with N >= 1, e.g. images=test:18.") from e
    if n < 1:
        raise ConfigError(f"images={spec}: expected test:N with N >= 1, e.g. images=test:18.")
    X, y = raw_test_images(n, cfg.data_dir or data.get("data_dir"), data.get("download", False), data.get("classes"))
    if len(X) < n:
        print(f"images={spec}: the test set has {len(X)} images; predicting all {len(X)}", flush=True)
    P = classifier.probabilities(X)
    preds = P.argmax(1)
    names = classifier.class_names
    for i, probs in enumerate(P.numpy()):
        print(prediction_lines(f"test image {i} (true: {names[int(y[i])]})", probs, names, k), flush=True)
    shown = min(len(X), GRID_MAX)
    grid = grids.predictions_grid(X[:shown], y[:shown], preds[:shown], names, out / "predictions.png",
                                  cols=min(9, shown), confidences=P.max(1).values[:shown])
    right = int((preds == y).sum())
    print(f"{right} of {len(X)} right; the grid (true / predicted, mistakes in red): {grid}" + _cap(shown, len(X)),
          flush=True)
    return {"predicted": float(len(X)), "accuracy": right / len(X)}
