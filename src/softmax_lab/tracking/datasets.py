"""The data a run trained and was measured on, as MLflow dataset inputs (the run page's Datasets panel, the runs
table's Dataset column): one per split, named, with a digest of the files' contents and how they were split."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
# What makes a split's images and labels what they are: the official test set is the files' (the classes kept); the
# train/val split depends on how it was drawn too. Preprocessing (normalize, resize) is a param of the run, not a
# new dataset: one test dataset on the Models page for every model measured on it.
IDENTITY = {"train": ("val_size", "split_seed", "classes"), "val": ("val_size", "split_seed", "classes"),
            "test": ("classes",)}


@lru_cache(maxsize=4)
def files_digest(paths: tuple[str, ...], stamps: tuple[tuple[int, int], ...]) -> str:
    """sha256 of the files' bytes, once per process for the same files (size and mtime in the key)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def dataset_inputs(datamodule, splits=tuple(CONTEXTS)) -> list:
    """One DatasetInput per split (train, val, test by default) of a loaded FashionMNISTDataModule."""
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    files = tuple(sorted(str(p) for p in datamodule.located_files.values()))
    content = files_digest(files, tuple((Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in files))
    how = {k: getattr(datamodule, k) for k in ("val_size", "split_seed", "normalize", "resize", "classes")}
    schema = Schema([TensorSpec(np.dtype("float32"), (-1, datamodule.num_inputs), "pixels"),
                     TensorSpec(np.dtype("int64"), (-1,), "label")])
    subset = f" classes {datamodule.classes}" if datamodule.classes else ""
    inputs = []
    for split in splits:
        identity = {k: how[k] for k in IDENTITY[split]}
        digest = hashlib.sha256(json.dumps([content, split, identity], default=str).encode()).hexdigest()[:8]
        meta = MetaDataset(LocalArtifactDatasetSource(str(datamodule.located_dir)),
                           name=f"fashion-mnist {split}{subset}", digest=digest, schema=schema).to_dict()
        rows = len(datamodule.splits[split][1])
        profile = json.dumps({"num_rows": rows, "num_classes": datamodule.num_classes, "side": datamodule.side,
                              **{k: v for k, v in how.items() if v is not None}})
        inputs.append(DatasetInput(Dataset(meta["name"], meta["digest"], meta["source_type"], meta["source"],
                                           meta.get("schema"), profile),
                                   tags=[InputTag("mlflow.data.context", CONTEXTS[split])]))
    return inputs
