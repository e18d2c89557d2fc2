"""A trained softmax regression as a classifier of raw images: p = softmax(prepare(x) W + b).

What predict.py and the run's MLflow model both use, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softmax_lab.maths.pixels import prepare_pixels
from softmax_lab.maths.softmax_regression import linear_weights


@dataclass
class LinearClassifier:
    W: torch.Tensor  # (inputs, classes), float32, on the CPU
    b: torch.Tensor  # (classes,)
    class_names: list[str]
    resize: int | None = None  # the run's data preparation: data.resize, data.normalize's statistics
    mean: float = 0.0
    std: float = 1.0

    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, classes) probabilities of images given as pixels in [0, 1], (n, 28, 28) or (n, 784)."""
        X = prepare_pixels(pixels, self.resize, self.mean, self.std)
        return torch.softmax(X @ self.W + self.b, dim=1)


def classifier_of(state_dict: dict, impl: str, class_names: list[str], resize: int | None = None,
                  mean: float = 0.0, std: float = 1.0) -> LinearClassifier:
    """The classifier a module's state dict holds (either implementation), as float32 CPU tensors."""
    W, b = linear_weights(state_dict, impl)
    return LinearClassifier(W.detach().float().cpu().contiguous(), b.detach().float().cpu().clone(),
                            list(class_names), resize, mean, std)
