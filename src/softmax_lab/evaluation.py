"""evaluate(cfg): a checkpoint's model on the official test set, with its pictures, as an MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from softmax_lab.checkpoints import CheckpointError, read_checkpoint  # noqa: F401 (CheckpointError: re-export)
from softmax_lab.config import validate_eval_config
from softmax_lab.data import FashionMNISTDataModule
from softmax_lab.errors import ConfigError
from softmax_lab.losses import name_of
from softmax_lab.module import SoftmaxRegressionModule
from softmax_lab.signals import INTERRUPTS
from softmax_lab.tracking import recorded_run, source_tags
from softmax_lab.training import hydra_context, print_summary, record_pictures, scalars

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a checkpoint on the official test set as an MLflow run of its own; its metrics."""
    with INTERRUPTS.installed():
        return _evaluate(cfg)


def _evaluate(cfg: DictConfig) -> dict[str, float]:
    from hydra.utils import instantiate

    validate_eval_config(cfg)
    path = Path(cfg.ckpt_path).expanduser()
    ckpt = read_checkpoint(path)
    data_hparams = {**ckpt["datamodule_hyper_parameters"], "eval_batch_size": cfg.batch_size}
    if cfg.data_dir is not None:
        data_hparams["data_dir"] = cfg.data_dir
    datamodule = FashionMNISTDataModule(**data_hparams)
    module = SoftmaxRegressionModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    try:
        trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=cfg.paths.output_dir)
    except Exception as e:  # Lightning's refusal of the accelerator, in one line
        raise ConfigError(f"accelerator={cfg.accelerator}: {str(e).strip()[:300]} Fix: accelerator=cpu or auto.") \
            from None
    tracker = instantiate(cfg.logger)
    tracker.connect()
    datamodule.load()
    run_dir = Path(cfg.paths.output_dir)
    overrides = hydra_context().get("overrides", [])
    hp = ckpt["hyper_parameters"]
    loss = name_of(hp["loss"]["_target_"])
    name = f"eval {path.name} (loss={loss} impl={hp['impl']})"
    tags = {"ckpt_path": str(path.resolve()), "run_dir": str(run_dir), "impl": hp["impl"], "loss": loss,
            "kind": "eval", "overrides": " ".join(overrides) or "(defaults)", **source_tags("src/eval.py")}
    if ckpt.get("mlflow_run_id"):
        tags["source_run_id"] = ckpt["mlflow_run_id"]
    params = {"loss": loss, "impl": hp["impl"], "checkpoint_epochs": str(len(ckpt.get("history", []))),
              "batch_size": str(cfg.batch_size)}
    with recorded_run(tracker, name, tags):
        tracker.log_config(cfg, overrides, run_dir, params)
        trainer.logger = tracker.lightning_logger()
        trainer.callbacks.extend(tracker.callbacks())
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics = scalars(trainer.callback_metrics)
        record_pictures(module, datamodule, run_dir, name, tracker)
        print_summary(metrics, tracker, run_dir, "")
        return metrics
