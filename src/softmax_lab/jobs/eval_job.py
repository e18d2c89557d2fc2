"""evaluate(cfg): a checkpoint's model on the official test set, with its pictures, as an MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from softmax_lab.config import validate_eval_config
from softmax_lab.data.datamodule import FashionMNISTDataModule
from softmax_lab.errors import ConfigError
from softmax_lab.jobs.naming import check_run_dir, hydra_context
from softmax_lab.jobs.run_report import print_summary, record_pictures, scalars, test_table, write_run_config
from softmax_lab.maths.losses import name_of
from softmax_lab.signals import INTERRUPTS
from softmax_lab.steps.lightning_module import module_from_checkpoint
from softmax_lab.tracking.run import recorded_run
from softmax_lab.tracking.run_fields import source_tags
from softmax_lab.trainer.checkpoints import read_checkpoint


def evaluate(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, float]:
    """Test a checkpoint on the official test set as an MLflow run of its own; its metrics. `overrides` as train's."""
    with INTERRUPTS.installed():
        check_run_dir(cfg)
        validate_eval_config(cfg)
        path = Path(cfg.ckpt_path).expanduser()
        ckpt = read_checkpoint(path)
        module, datamodule, trainer = checkpoint_and_data(cfg, ckpt)
        tracker = instantiate(cfg.logger)
        tracker.connect()
        datamodule.load()
        run_dir, overrides = Path(cfg.paths.output_dir), hydra_context().get("overrides", list(overrides))
        name, tags, params = eval_run_fields(cfg, path, ckpt, run_dir, overrides)
        with recorded_run(tracker, name, tags):
            for p in write_run_config(run_dir, cfg, overrides):
                tracker.log_artifact(p)
            tracker.log_params(params)
            tracker.log_datasets(datamodule, ("test",))
            trainer.logger = tracker.lightning_logger()
            trainer.callbacks.extend(tracker.callbacks())
            trainer.test(module, datamodule=datamodule, verbose=False)
            metrics = scalars(trainer.callback_metrics)
            record_pictures(module, datamodule, ckpt.get("history", []), run_dir, name, tracker)
            tracker.set_description(eval_description(path, ckpt.get("mlflow_run_id"), tracker, metrics))
            print_summary(metrics, tracker, run_dir, "")
            return metrics


def checkpoint_and_data(cfg: DictConfig, ckpt: dict) -> tuple:
    """The checkpoint's module, its data module (the test set at cfg.batch_size; cfg.data_dir where given) and a
    Trainer on cfg.accelerator, without Lightning's own logger: ConfigError for an accelerator Lightning refuses."""
    data_hparams = {**ckpt["datamodule_hyper_parameters"], "eval_batch_size": cfg.batch_size}
    if cfg.data_dir is not None:
        data_hparams["data_dir"] = cfg.data_dir
    datamodule = FashionMNISTDataModule(**data_hparams)
    module = module_from_checkpoint(ckpt)
    try:
        trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=cfg.paths.output_dir)
    except (MisconfigurationException, ValueError, RuntimeError) as e:  # Lightning's refusal of the accelerator
        raise ConfigError(f"accelerator={cfg.accelerator}: {str(e).strip()[:300]} Fix: accelerator=cpu or auto.") \
            from e
    return module, datamodule, trainer


def eval_run_fields(cfg: DictConfig, path: Path, ckpt: dict, run_dir: Path, overrides: list[str]) -> tuple:
    """The eval run's name, tags (kind=eval, its checkpoint and the training run it came from) and params."""
    hp = ckpt["hyper_parameters"]
    loss = name_of(hp["loss"]["_target_"])
    name = f"eval {path.name} (loss={loss} impl={hp['impl']})"
    tags = {"ckpt_path": str(path.resolve()), "run_dir": str(run_dir), "impl": hp["impl"], "loss": loss,
            "kind": "eval", "overrides": " ".join(overrides) or "(defaults)", **source_tags("src/eval.py")}
    if ckpt.get("mlflow_run_id"):
        tags["source_run_id"] = ckpt["mlflow_run_id"]
    params = {"loss": loss, "impl": hp["impl"], "checkpoint_epochs": str(len(ckpt.get("history", []))),
              "batch_size": str(cfg.batch_size)}
    return name, tags, params


def eval_description(path: Path, source_run_id: str | None, tracker, metrics: dict[str, float]) -> str:
    """What an eval run is: which checkpoint, from which training run (linked when this store holds it), and what it
    measured; marked as an evaluation (tag kind=eval), which the leaderboard leaves out."""
    source = "a run this store does not hold" if source_run_id else "no recorded training run"
    found = tracker.find_run(source_run_id) if source_run_id and tracker.enabled else None
    if found is not None:
        source = f"training run [{found.info.run_name}](#/experiments/{found.info.experiment_id}/runs/{source_run_id})"
    elif source_run_id:
        source += f" (run id `{source_run_id}`)"
    acc = f"{metrics['test/acc']:.4f}" if "test/acc" in metrics else "-"
    return "\n".join([f"**Evaluation** of checkpoint `{path.name}` from {source}, on the official test set: test "
                      f"accuracy **{acc}**. An evaluation, not a training run: the leaderboard leaves it out (tag "
                      "kind=eval).", "", f"Checkpoint: `{path.resolve()}`", "", *test_table(metrics)])
