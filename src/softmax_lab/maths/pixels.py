"""Pixels as the model takes them: [0, 1] as ToTensor makes them, optionally resized and standardised."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_pixels(X: torch.Tensor, resize: int | None) -> torch.Tensor:
    """float (n, 28, 28) in [0, 1] -> (n, side*side), bilinearly resized with antialiasing when `resize` is set."""
    if resize:
        X = torch.cat([F.interpolate(c.unsqueeze(1), size=(resize, resize), mode="bilinear", antialias=True,
                                     align_corners=False).clamp_(0, 1)
                       for c in X.split(4096)])
    return X.reshape(len(X), -1)


def prepare_pixels(X: torch.Tensor, resize: int | None, mean: float, std: float) -> torch.Tensor:
    """Pixels in [0, 1] (n, 28, 28) or (n, 784) -> the model's inputs, as training prepared them."""
    return (resize_pixels(X.reshape(len(X), 28, 28).float(), resize) - mean) / std
