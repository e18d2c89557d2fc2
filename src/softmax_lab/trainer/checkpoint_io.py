"""Lightning's checkpoint writer, made atomic (files.py): a kill at any moment, SIGKILL included, leaves the
previous last.ckpt whole."""

from __future__ import annotations

from pytorch_lightning.plugins import TorchCheckpointIO

from softmax_lab.files import replacing


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with replacing(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
