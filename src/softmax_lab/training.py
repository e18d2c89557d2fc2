"""train(cfg): validate -> instantiate -> fit -> test on the best checkpoint -> pictures -> MLflow.

Everything a user can get wrong is checked before any data is read or any MLflow run is created;
after that, whatever happens is recorded: FINISHED, FAILED (with the reason) or KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from softmax_lab import trainer_flags
from softmax_lab.callbacks import SaveInitialCheckpoint
from softmax_lab.checkpoints import check_resumable, read_checkpoint
from softmax_lab.config import validate_config
from softmax_lab.errors import ConfigError, RunInterrupted
from softmax_lab.tracking import NoTracking, git_state, launched_as_rank_zero, recorded_run

log = logging.getLogger(__name__)

# Overrides that say where or how things run, not what is trained: left out of run names.
_PLACE_KEYS = ("hydra.", "paths.", "logger.", "+hydra", "ckpt_path", "~", "data.data_dir", "data.download",
               "trainer.accelerator", "trainer.devices", "trainer.enable_progress_bar", "callbacks.")
SWEPT_KEYS_ENV = "SOFTMAX_LAB_SWEPT_KEYS"  # set by the sweep callback: a job is named by what its sweep varies


def hydra_context() -> dict:
    """Overrides, choices and the sweep position of the current Hydra job ({} outside Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    ctx = {"overrides": list(hc.overrides.task), "choices": dict(hc.runtime.choices)}
    if hc.mode == hc.mode.MULTIRUN:  # reading job.num in a single run raises
        ctx.update(job_num=hc.job.num, sweep_dir=hc.sweep.dir)
    return ctx


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """'loss=huber impl=scratch optimizer.lr=0.05': the loss and impl always, then what else was changed."""
    loss = type(instantiate(cfg.loss)).name if "_target_" in cfg.loss else "?"
    head = [f"loss={loss}", f"impl={cfg.model.impl}"]
    rest = [o for o in overrides if not o.startswith(("loss=", "impl=", *_PLACE_KEYS))]
    swept = os.environ.get(SWEPT_KEYS_ENV)
    if swept is not None:
        rest = [o for o in rest if o.split("=", 1)[0].lstrip("+~") in swept.split(",")]
    return " ".join(head + rest)


class GracefulStop(pl.Callback):
    """SIGINT/SIGTERM stop the run at the next safe point, a batch boundary, never inside an MLflow write
    (an exception there would leave the sqlite store locked). A second signal stops at once."""

    def __init__(self):
        self.signum = None

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise RunInterrupted(signum)
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise RunInterrupted(self.signum)

    @contextlib.contextmanager
    def installed(self):
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in saved:
            signal.signal(s, self._handler)
        try:
            yield self
        finally:
            for s, h in saved.items():
                signal.signal(s, h)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.check()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.check()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.check()


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


def write_pictures(module, datamodule, run_dir: Path, title: str) -> list[Path]:
    from softmax_lab import plots

    names = datamodule.class_names
    X, y = datamodule.images("train", 18)
    paths = [plots.samples_grid(X, y, names, run_dir / "samples.png")]
    X, y = datamodule.images("test", 18)
    Xt = datamodule.splits["test"][0][:18]
    with torch.no_grad():  # in the module's precision (trainer.precision=64-true makes it float64)
        preds = module(Xt.to(module.device, module.dtype)).argmax(1).cpu()
    paths.append(plots.predictions_grid(X, y, preds, names, run_dir / "predictions.png"))
    if "confusion" in module.test_results:
        paths.append(plots.confusion_matrix(module.test_results["confusion"], names, run_dir / "confusion_matrix.png",
                                            title=f"Test confusion matrix, {title}"))
    if module.history:
        paths.append(plots.learning_curves(module.history, run_dir / "curves.png", title=title))
    return paths


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model as `cfg` says; return its metrics (val/acc_best for sweepers)."""
    validate_config(cfg)
    ctx = hydra_context()
    overrides = ctx.get("overrides", [])
    run_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, verbose=False)

    # Everything that can refuse the config, before any data is read or any run created.
    flags = trainer_flags.plan(cfg.trainer, cfg.model.impl, cfg.data.batches_per_step, cfg.callbacks)
    datamodule = instantiate(cfg.data, **flags.data, _convert_="all")  # plain values: they go into checkpoints
    module = instantiate(cfg.model, num_inputs=datamodule.num_inputs, num_classes=datamodule.num_classes,
                         class_names=datamodule.class_names, **flags.module, _recursive_=False, _convert_="all")
    name = run_name(cfg, overrides)
    if cfg.ckpt_path:
        check_resumable(read_checkpoint(cfg.ckpt_path), cfg.ckpt_path, module.hparams)
    stop = GracefulStop()
    trainer = make_trainer(cfg, flags, [*make_callbacks(cfg), stop])
    trainer_flags.check_trainer(trainer, flags, cfg.model.impl)
    # Lightning's fast_dev_run is a smoke test: no logger run and no checkpoints, as Lightning documents
    quiet = bool(trainer.fast_dev_run)
    tracker = instantiate(cfg.logger) if launched_as_rank_zero() and not quiet else NoTracking()
    # Creating a fresh sqlite store takes seconds (schema migrations): do it while the data is read. The
    # executor waits for it either way, so a DataError never leaves a half-created store behind.
    with ThreadPoolExecutor(max_workers=1) as pool:
        connecting = pool.submit(tracker.connect)
        datamodule.load()  # read and validate the files: a DataError stops here, before any run exists
        connecting.result()  # an unreachable store stops here, before training

    tags = {"overrides": " ".join(overrides) or "(defaults)", "run_dir": str(run_dir),
            "loss": name.split()[0].removeprefix("loss="), "impl": cfg.model.impl, **git_state()}
    if "job_num" in ctx:
        tags.update(sweep_dir=ctx["sweep_dir"], job_num=ctx["job_num"])
    if cfg.ckpt_path:
        tags["resumed_from"] = str(cfg.ckpt_path)
    with stop.installed():
        try:
            with recorded_run(tracker, name, tags):
                return fit_test_record(cfg, module, datamodule, tracker, trainer, stop, name, overrides, run_dir)
        except (KeyboardInterrupt, SIGTERMException) as e:  # recorded KILLED; one exception type for the CLI
            raise RunInterrupted(signal.SIGTERM if isinstance(e, SIGTERMException) else signal.SIGINT) from e


def make_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The configured callbacks; `null` switches one off, and the switches Lightning users know also work:
    trainer.enable_progress_bar=false removes our bar, trainer.enable_checkpointing=false our checkpoints."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not cfg.trainer.get("enable_checkpointing", True):
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ModelCheckpoint | SaveInitialCheckpoint)]
    return callbacks


def make_trainer(cfg: DictConfig, flags, callbacks) -> pl.Trainer:
    """Lightning's Trainer as configured (flags the module honours by hand replaced); the logger is attached
    once the run exists. Lightning refuses impossible settings here: one ConfigError with its reason."""
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=False, **flags.trainer)
    except InstantiationException as e:
        reason = str(e.__cause__ or e).strip()[:600]
        raise ConfigError(f"trainer: {reason} Fix: correct the trainer.* value, or trainer=cpu, which runs anywhere "
                          "(see `python src/train.py --cfg job`).") from None


def fit_test_record(cfg, module, datamodule, tracker, trainer, stop: GracefulStop, name, overrides, run_dir) -> dict:
    """Fit, test the best checkpoint, write and log the pictures and the checkpoint; the metrics."""
    tracker.log_config(cfg, overrides, run_dir)
    trainer.logger = tracker.lightning_logger()
    trainer.callbacks.extend(tracker.callbacks())
    checkpointing = next((c for c in trainer.callbacks
                          if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor), None)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    stop.check()
    metrics = scalars(trainer.callback_metrics)
    best = checkpointing.best_model_path if checkpointing is not None else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    metrics.update(scalars(trainer.callback_metrics))
    stop.check()
    if trainer.fast_dev_run:
        print(f"fast_dev_run: {int(trainer.fast_dev_run)} batch(es) of training, validation and test ran without "
              f"errors; as Lightning's fast_dev_run, nothing was recorded or checkpointed.", flush=True)
    elif trainer.is_global_zero:
        for p in write_pictures(module, datamodule, run_dir, name):
            tracker.log_artifact(p, "pictures")
        if best:
            tracker.log_artifact(Path(best), "checkpoints")
        print_summary(metrics, tracker, run_dir, best)
    return metrics


def print_summary(metrics: dict[str, float], tracker, run_dir: Path, best: str) -> None:
    lines = [
        f"test/acc {metrics.get('test/acc', float('nan')):.4f}  test/loss {metrics.get('test/loss', float('nan')):.4f}"
        f"  val/acc_best {metrics.get('val/acc_best', float('nan')):.4f}",
        f"run: {tracker.describe()}",
        f"pictures and config: {run_dir}",
    ]
    if best:
        lines.append(f"best checkpoint: {best}")
    if tracker.browse_hint():
        lines.append(tracker.browse_hint())
    print("\n".join(lines), flush=True)


def configure_logging_quietly() -> None:
    """Lightning's start-up banners (GPU available, TPU, ...) add nothing for this model."""
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning_fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)

