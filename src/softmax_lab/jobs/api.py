"""The Python API, for notebooks and scripts: the runs, store, checkpoints and pictures of the command line.

    from softmax_lab.jobs.api import train, evaluate
    result = train("loss=huber", "impl=scratch")        # overrides as on the command line
    result.metrics["test/acc"], result.run_id, result.run_dir, result.model_uri, result.link
    evaluate(f"ckpt_path={result.best_checkpoint}")

One run per call, in a run dir of its own under outputs/runs/ (as `python src/train.py` makes it), recorded in the
store the command line would use (logger.tracking_uri, else $MLFLOW_TRACKING_URI, else outputs/mlflow.db). Sweeps
and searches (`-m`) stay on the command line: they need Hydra's launcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from softmax_lab.config import compose as compose_at
from softmax_lab.errors import ConfigError


@dataclass(frozen=True)
class Result:
    """What one train() or evaluate() call measured and where it is."""

    metrics: dict[str, float]
    run_id: str | None  # the MLflow run (None with logger=none)
    run_dir: Path  # checkpoints/, the pictures, config.yaml
    tracking_uri: str | None

    @property
    def pictures(self) -> dict[str, Path]:
        """The run's pictures by name (curves, confusion_matrix, reliability, ...)."""
        return {p.stem: p for p in sorted(self.run_dir.glob("*.png"))}

    @property
    def best_checkpoint(self) -> Path | None:
        return next(iter(sorted((self.run_dir / "checkpoints").glob("best-*.ckpt"))), None)

    @property
    def model_uri(self) -> str | None:
        """The run's MLflow model (mlflow.pyfunc.load_model), None without one."""
        if self.run_id is None or self.tracking_uri is None:
            return None
        from mlflow.tracking import MlflowClient

        outputs = MlflowClient(self.tracking_uri).get_run(self.run_id).outputs
        models = outputs.model_outputs if outputs else []
        return f"models:/{models[0].model_id}" if models else None

    @property
    def link(self) -> str | None:
        """The run in the MLflow UI (`make ui` serves a sqlite store at this address)."""
        if self.run_id is None or self.tracking_uri is None:
            return None
        from mlflow.tracking import MlflowClient

        from softmax_lab.tracking.uris import UI_VIEW, ui_base

        experiment = MlflowClient(self.tracking_uri).get_run(self.run_id).info.experiment_id
        return f"{ui_base(self.tracking_uri)}/#/experiments/{experiment}/runs/{self.run_id}?{UI_VIEW}"


def compose(*overrides: str, config_name: str = "train", output_dir: str | Path | None = None) -> DictConfig:
    """The config `python src/<config_name>.py OVERRIDES` runs, in a new run dir under outputs/runs/ (or
    output_dir). ConfigError for `-m` and sweep values: one run per call."""
    for o in overrides:
        if o.startswith("-") and "=" not in o:
            raise ConfigError(f"{o!r} is a command-line flag: the API runs one job per call. Fix: drop it; for a sweep "
                              f"or a search, run `python src/{config_name}.py -m ...`.")
    if output_dir is None:
        with_hydra = compose_at(list(overrides), "unused", config_name, return_hydra_config=True)
        output_dir = OmegaConf.select(with_hydra, "hydra.run.dir")  # outputs/runs/<date>/<time>, as the CLI's
    return compose_at(list(overrides), output_dir, config_name)


def _recorded(cfg: DictConfig, metrics: dict[str, float]) -> Result:
    """The Result of the job that just ran in cfg's run dir: its MLflow run found by its `run_dir` tag."""
    run_dir = Path(cfg.paths.output_dir)
    if not OmegaConf.select(cfg, "logger._target_", default="").endswith("MlflowTracker"):
        return Result(dict(metrics), None, run_dir, None)
    from mlflow.tracking import MlflowClient

    from softmax_lab.tracking.uris import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.logger.get("tracking_uri"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    runs = client.search_runs([experiment.experiment_id], f"tags.run_dir = '{run_dir}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiment else []
    return Result(dict(metrics), runs[0].info.run_id if runs else None, run_dir, uri)


def train(*overrides: str, output_dir: str | Path | None = None) -> Result:
    """Train and test one model, as `python src/train.py OVERRIDES` does."""
    from softmax_lab.console import quiet_console
    from softmax_lab.jobs.train_job import train as train_job

    quiet_console()  # what the command line shows, without Lightning's banners
    cfg = compose(*overrides, output_dir=output_dir)
    return _recorded(cfg, train_job(cfg, overrides))


def evaluate(*overrides: str, output_dir: str | Path | None = None) -> Result:
    """Test a checkpoint on the official test set as an MLflow run of its own, as `python src/eval.py OVERRIDES`."""
    from softmax_lab.console import quiet_console
    from softmax_lab.jobs.eval_job import evaluate as evaluate_job

    quiet_console()
    cfg = compose(*overrides, config_name="eval", output_dir=output_dir)
    return _recorded(cfg, evaluate_job(cfg, overrides))
