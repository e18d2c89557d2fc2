"""What a job writes beside its results and prints at its end: the config files, the run's description in the MLflow
UI, the closing summary on the console."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from softmax_lab.files import write_text


def scalars(metrics: dict) -> dict[str, float]:
    """Lightning's callback metrics (tensors) as plain numbers."""
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


def write_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> list[Path]:
    """config.yaml (the whole resolved config; the tracking URI, which may hold credentials, left out) and
    overrides.yaml in the run dir. Only rank 0 calls it: the run dir has one writer."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(resolved.get("logger"), dict):
        resolved["logger"].pop("tracking_uri", None)
    return [write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved))),
            write_text(run_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))]


TEST_KEYS = ("test/acc", "test/loss", "test/nll", "test/ece", "test/brier")


def test_table(metrics: dict[str, float]) -> list[str]:
    """The test metrics as a markdown table's lines."""
    cells = [f"{metrics[k]:.4f}" if k in metrics else "-" for k in TEST_KEYS]
    return ["| " + " | ".join(TEST_KEYS) + " |", "|" + "---|" * len(TEST_KEYS), "| " + " | ".join(cells) + " |"]


def run_description(name: str, metrics: dict[str, float], history: list[dict], model_uri: str | None, best: str,
                    run_dir: Path) -> str:
    """The run's description in the MLflow UI (markdown): its result at a glance and where everything is."""
    def m(key):
        return f"{metrics[key]:.4f}" if key in metrics else "-"

    best_epoch = max(history, key=lambda h: h.get("val/acc", -1))["epoch"] + 1 if history else "-"
    lines = [f"**{name}**: test accuracy **{m('test/acc')}** (best validation accuracy {m('val/acc_best')} at "
             f"epoch {best_epoch} of {len(history)}).", "", *test_table(metrics), "",
             "Pictures: `pictures/curves.png`, `reliability.png`, `per_class_accuracy.png`, `confusion_matrix.png`, "
             "`predictions.png`; per-class accuracy: `tables/per_class_accuracy.csv`.",
             f"Model: `{model_uri}` (mlflow.pyfunc.load_model)." if model_uri else "",
             f"Run dir: `{run_dir}`" + (f"; best checkpoint `{Path(best).name}`." if best else ".")]
    return "\n".join(lines)


def print_summary(metrics: dict[str, float], tracker, run_dir: Path, best: str) -> None:
    """The run's closing lines: its test numbers, where its run, pictures, best checkpoint and model are."""
    lines = ["  ".join(f"{k} {metrics[k]:.4f}" for k in ("test/acc", "test/loss", "val/acc_best", "test/ece")
                       if k in metrics),
             f"run: {tracker.describe()}", f"pictures and config: {run_dir}"]
    if best:
        lines.append(f"best checkpoint: {best}")
    if tracker.model_uri:
        lines.append(f"model: {tracker.model_uri}")
    if tracker.browse_hint():
        lines.append(tracker.browse_hint())
    print("\n".join(lines), flush=True)


def record_pictures(module, datamodule, history: list[dict], run_dir: Path, title: str, tracker) -> None:
    """Write the run's pictures and tables into its run dir and log them (pictures/, tables/)."""
    from softmax_lab.pictures.run_pictures import write_run_pictures

    for p in write_run_pictures(module, datamodule, history, run_dir, title):
        tracker.log_artifact(p, "tables" if p.suffix == ".csv" else "pictures")


def model_example(datamodule, n: int = 5):
    """The first n official test images as the run's MLflow model takes them: float32 (n, 784) in [0, 1]."""
    X, _ = datamodule.raw_test_images(n)
    return X.reshape(len(X), -1).numpy().astype("float32")
