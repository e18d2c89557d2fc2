"""Shared fixtures: tiny IDX files the tests write, the real data set, composed configs."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # src/train.py's helpers, if the package is not installed

from softmax_lab.config import compose  # noqa: E402,F401 (tests import it from here)
from softmax_lab.data import FILES, SYSTEM_DIR  # noqa: E402

warnings.filterwarnings("ignore", ".*LeafSpec.*")
torch.set_num_threads(1)  # tiny tensors: threads cost more than they give


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + len(array).to_bytes(4, "big")
    if magic == 2051:
        header += array.shape[1].to_bytes(4, "big") + array.shape[2].to_bytes(4, "big")
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, magic: int) -> Path:
    data = idx_bytes(array, magic)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n learnable 28x28 images: class c lights up row band c, plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    rng.shuffle(y)
    X = rng.integers(0, 60, size=(n, 28, 28))
    for i, c in enumerate(y):
        X[i, 2 + 2 * c : 4 + 2 * c, :] = 200 + rng.integers(0, 55)
    return X.astype(np.uint8), y.astype(np.uint8)


def write_dataset(directory: Path, n_train: int = 600, n_test: int = 200, gz: bool = True,
                  layout: str = "flat") -> Path:
    base = directory / "FashionMNIST" / "raw" if layout == "torchvision" else directory
    ext = ".gz" if gz else ""
    (Xtr, ytr), (Xte, yte) = tiny_split(n_train, 0), tiny_split(n_test, 1)
    write_idx(base / (FILES["train_images"] + ext), Xtr, 2051)
    write_idx(base / (FILES["train_labels"] + ext), ytr, 2049)
    write_idx(base / (FILES["test_images"] + ext), Xte, 2051)
    write_idx(base / (FILES["test_labels"] + ext), yte, 2049)
    return directory


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A learnable 600/200-image Fashion-MNIST look-alike, gzip, flat layout."""
    return write_dataset(tmp_path_factory.mktemp("tiny-fmnist"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real data set; on a user's machine without it the test skips, in CI it fails."""
    if not (SYSTEM_DIR / (FILES["train_images"] + ".gz")).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the real data set is missing from {SYSTEM_DIR} "
                        "(.ci/run installs dataset-fashion-mnist)")
        pytest.skip(f"real Fashion-MNIST not installed in {SYSTEM_DIR} (apt-get install dataset-fashion-mnist)")
    return SYSTEM_DIR


@pytest.fixture
def make_cfg(tmp_path, tiny_data, monkeypatch):
    """compose() on the tiny data, two quick epochs, MLflow into tmp_path/mlflow.db (via $MLFLOW_TRACKING_URI)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def make(*overrides, data=None):
        base = [f"data.data_dir={data or tiny_data}", "data.val_size=100", "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false", "~callbacks.progress_bar", "trainer.accelerator=cpu"]
        return compose(base + list(overrides), tmp_path / "run")

    return make


def run_cli(args: list[str], env: dict | None = None, timeout: int = 300, script: str = "src/train.py",
            **kwargs) -> subprocess.CompletedProcess:
    """`python src/train.py ARGS` as a user runs it, from the project root."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def mlflow_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, (client.search_runs(exps, max_results=1000) if exps else [])
