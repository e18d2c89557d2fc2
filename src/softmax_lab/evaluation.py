"""evaluate(cfg): a checkpoint's model on the official test set, with its pictures, as an MLflow run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from softmax_lab.checkpoints import CheckpointError, read_checkpoint  # noqa: F401 (CheckpointError: re-export)
from softmax_lab.data import FashionMNISTDataModule
from softmax_lab.module import SoftmaxRegressionModule
from softmax_lab.tracking import recorded_run
from softmax_lab.training import hydra_context, print_summary, scalars, write_pictures

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    from hydra.utils import instantiate

    path = Path(cfg.ckpt_path).expanduser()
    ckpt = read_checkpoint(path)
    data_hparams = {**ckpt["datamodule_hyper_parameters"], "eval_batch_size": cfg.batch_size}
    if cfg.data_dir is not None:
        data_hparams["data_dir"] = cfg.data_dir
    datamodule = FashionMNISTDataModule(**data_hparams)
    module = SoftmaxRegressionModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    datamodule.load()
    tracker = instantiate(cfg.logger)
    tracker.connect()
    run_dir = Path(cfg.paths.output_dir)
    source = ckpt.get("mlflow_run_id")
    hp = ckpt["hyper_parameters"]
    name = f"eval {path.name} (impl={hp['impl']} loss={hp['loss']['_target_'].rsplit('.', 1)[-1]})"
    tags = {"ckpt_path": str(path.resolve()), "run_dir": str(run_dir), "impl": hp["impl"], "kind": "eval",
            "overrides": " ".join(hydra_context().get("overrides", []))}
    if source:
        tags["source_run_id"] = source
    with recorded_run(tracker, name, tags):
        tracker.log_config(cfg, hydra_context().get("overrides", []), run_dir)
        trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, logger=tracker.lightning_logger(),
                             callbacks=tracker.callbacks(), enable_progress_bar=False, enable_model_summary=False,
                             default_root_dir=run_dir)
        trainer.test(module, datamodule=datamodule, verbose=False)
        metrics = scalars(trainer.callback_metrics)
        for p in write_pictures(module, datamodule, run_dir, name):
            tracker.log_artifact(p, "pictures")
        print_summary(metrics, tracker, run_dir, "")
        return metrics
