"""A run's pictures and its per-class table, written into its run dir: what train.py and eval.py both draw."""

from __future__ import annotations

from pathlib import Path

import torch

from softmax_lab.files import write_text
from softmax_lab.pictures import charts, grids


def confident_mistakes(module, datamodule, path: Path, n: int = 9) -> Path:
    """The test images the model gets wrong with the highest probability: where its confidence misleads."""
    X, y = datamodule.splits["test"]
    with torch.no_grad():
        P = torch.cat([module(X[i : i + 4096].to(module.device, module.dtype)).float().softmax(1)
                       for i in range(0, len(X), 4096)]).cpu()
    confidence, predicted = P.max(1)
    wrong = (predicted != y.cpu()).nonzero().squeeze(1)
    worst = wrong[confidence[wrong].argsort(descending=True)[:n]]
    images, labels = datamodule.images("test", len(worst), index=worst)
    names = datamodule.class_names
    titles = [f"{names[int(t)]}\n{names[int(p)]} {c:.0%}" for t, p, c in
              zip(labels, predicted[worst], confidence[worst].tolist())]
    return grids.image_grid(images, titles, path, rows=1, cols=max(len(titles), 1), title_colors=["red"] * len(titles),
                            suptitle=f"The {len(titles)} most confident mistakes on the test set (true / predicted, "
                                     "its probability)")


def write_run_pictures(module, datamodule, history: list[dict], run_dir: Path, title: str) -> list[Path]:
    """Training samples, test predictions, the most confident mistakes, and (after testing) the confusion matrix,
    per-class accuracy with its csv table, the reliability diagram; the learning curves when there is a history.
    Their paths."""
    names = datamodule.class_names
    X, y = datamodule.images("train", 18)
    paths = [grids.samples_grid(X, y, names, run_dir / "samples.png")]
    X, y = datamodule.images("test", 18)
    with torch.no_grad():  # in the module's precision (trainer.precision=64-true makes it float64)
        P = module(datamodule.splits["test"][0][:18].to(module.device, module.dtype)).float().softmax(1).cpu()
    paths.append(grids.predictions_grid(X, y, P.argmax(1), names, run_dir / "predictions.png",
                                        confidences=P.max(1).values))
    paths.append(confident_mistakes(module, datamodule, run_dir / "mistakes.png"))
    results = module.test_results
    if "confusion" in results:
        paths.append(charts.confusion_matrix(results["confusion"], names, run_dir / "confusion_matrix.png",
                                             title=f"Test confusion matrix, {title}"))
        paths.append(charts.per_class_accuracy(results["per_class_acc"], names, run_dir / "per_class_accuracy.png",
                                               title=title))
        paths.append(charts.reliability_diagram(results["bins"], results["test/ece"], run_dir / "reliability.png",
                                                title=title))
        paths.append(write_text(run_dir / "per_class_accuracy.csv", "class_id,class,test_acc\n" + "".join(
            f"{i},{name},{acc:.4f}\n" for i, (name, acc) in enumerate(zip(names, results["per_class_acc"])))))
    if history:
        paths.append(charts.learning_curves(history, run_dir / "curves.png", title=title))
    return paths
