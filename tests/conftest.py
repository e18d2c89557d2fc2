"""Shared by every test file: tiny IDX files the tests write, the real data set, composed configs, the CLI as a
user runs it, and reading what a run left (its MLflow store, its checkpoints)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the package, if it is not installed

from softmax_lab.config import compose  # noqa: E402,F401 (tests import it from here)
from softmax_lab.data.idx import FILES  # noqa: E402
from softmax_lab.data.locate import SYSTEM_DIR  # noqa: E402

torch.set_num_threads(1)  # tiny tensors: threads cost more than they give
# ... and so in every process a test starts (the CLIs, sweeps, DDP ranks): two xdist workers on two cores, each
# with a child of two spinning OpenMP threads, would oversubscribe the machine. A user's own setting wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# What a test run needs no sight of: no progress bar, the CPU whatever the machine has
QUIET = ["trainer.enable_progress_bar=false", "~callbacks.progress_bar", "trainer.accelerator=cpu"]


def pytest_collection_modifyitems(items):
    """The slow tests (seconds to a minute each) first, the quick ones after: xdist's workers then end together
    on short tests instead of one waiting for the other's last long one. Each group keeps its order."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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


def tiny_overrides(tiny_data: Path, *extra: str) -> list[str]:
    """The tiny data (500 training images after the 100 held out), two quick epochs, nothing on screen."""
    return [f"data.data_dir={tiny_data}", "data.val_size=100", "trainer.max_epochs=2", *QUIET, *extra]


@pytest.fixture
def make_cfg(tmp_path, tiny_data, monkeypatch):
    """compose() on the tiny data, two quick epochs, MLflow into tmp_path/mlflow.db (via $MLFLOW_TRACKING_URI)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def make(*overrides, data=None):
        return compose(tiny_overrides(data or tiny_data, *overrides), tmp_path / "run")

    return make


def run_cli(args: list[str], env: dict | None = None, timeout: int = 300, script: str = "src/train.py",
            measured: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """`python src/train.py ARGS` as a user runs it, from the project root.

    Under `make test-all` coverage traces a process only with `measured=True`: its tracer doubles a command's time
    (make test-all must stay within 15 minutes) and Hydra takes it for a debugger (it then prints its own errors
    with a traceback). The tests that reach code no in-process test can (sweeps, DDP, signals) are measured."""
    full_env = {**os.environ, **(env or {})} if measured else unmeasured_env(env)
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def unmeasured_env(env: dict | None = None) -> dict:
    """The environment for a process that coverage should not trace (see run_cli)."""
    full = {**os.environ, **(env or {})}
    for key in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START"):
        full.pop(key, None)
    return full


def mlflow_runs(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, (client.search_runs(exps, max_results=1000) if exps else [])


def store_of(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def last_ckpt(cfg) -> dict:
    return torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)


def weights(cfg) -> torch.Tensor:
    """W as (inputs, classes) from the run's last.ckpt, whichever implementation trained it."""
    from softmax_lab.maths.softmax_regression import linear_weights

    ckpt = last_ckpt(cfg)
    return linear_weights(ckpt["state_dict"], ckpt["hyper_parameters"]["impl"])[0]


def fit_only(cfg):
    """What train(cfg) fits, without its records (no MLflow, pictures or test pass): the run build_run makes,
    fitted. For tests of what the Trainer and the module do; the recording is train()'s own tests' subject."""
    from softmax_lab.jobs.training_run import build_run

    run = build_run(cfg)
    run.trainer.fit(run.module, datamodule=run.datamodule, weights_only=True)
    return run
