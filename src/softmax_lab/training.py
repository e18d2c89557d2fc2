"""train(cfg): validate -> instantiate -> fit -> test on the best checkpoint -> pictures -> MLflow.

Everything a user can get wrong is checked before any data is read or any MLflow run is created;
after that, whatever happens is recorded: FINISHED, FAILED (with the reason) or KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from softmax_lab import trainer_flags
from softmax_lab.callbacks import SaveInitialCheckpoint
from softmax_lab.checkpoints import (
    AtomicCheckpointIO,
    CheckpointError,
    check_resumable,
    epochs_done,
    nothing_left_to_train,
    read_checkpoint,
    run_dir_of,
)
from softmax_lab.config import validate_config
from softmax_lab.errors import WRITE_ERRNOS, ConfigError, RunInterrupted, StorageError
from softmax_lab.losses import name_of
from softmax_lab.signals import INTERRUPTS
from softmax_lab.tracking import (
    SWEPT_KEYS_ENV,
    NoTracking,
    launched_as_rank_zero,
    recorded_run,
    run_params,
    source_tags,
)

log = logging.getLogger(__name__)

# Overrides that say where or how things run, not what is trained: left out of run names.
_PLACE_KEYS = ("hydra.", "paths.", "logger.", "+hydra", "ckpt_path", "~", "data.data_dir", "data.download",
               "trainer.accelerator", "trainer.devices", "trainer.enable_progress_bar", "callbacks.")


def hydra_context() -> dict:
    """Overrides, choices and the sweep position of the current Hydra job ({} outside Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    ctx = {"overrides": list(hc.overrides.task), "choices": dict(hc.runtime.choices)}
    if hc.mode == hc.mode.MULTIRUN:  # reading job.num in a single run raises
        ctx.update(job_num=hc.job.num, sweep_dir=hc.sweep.dir, launcher=str(hc.launcher.get("_target_", "")))
    return ctx


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """'loss=huber impl=scratch optimizer.lr=0.05': the loss and impl always, then what else was changed."""
    head = [f"loss={name_of(cfg.loss._target_)}", f"impl={cfg.model.impl}"]
    rest = [o for o in overrides if not o.startswith(("loss=", "impl=", *_PLACE_KEYS))]
    swept = os.environ.get(SWEPT_KEYS_ENV)
    if swept is not None:
        rest = [o for o in rest if o.split("=", 1)[0].lstrip("+~") in swept.split(",")]
    return " ".join(head + rest)


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


def write_pictures(module, datamodule, run_dir: Path, title: str) -> list[Path]:
    """The run's pictures (and the per-class accuracy table) in the run dir; their paths."""
    from softmax_lab import plots

    names = datamodule.class_names
    X, y = datamodule.images("train", 18)
    paths = [plots.samples_grid(X, y, names, run_dir / "samples.png")]
    X, y = datamodule.images("test", 18)
    Xt = datamodule.splits["test"][0][:18]
    with torch.no_grad():  # in the module's precision (trainer.precision=64-true makes it float64)
        preds = module(Xt.to(module.device, module.dtype)).argmax(1).cpu()
    paths.append(plots.predictions_grid(X, y, preds, names, run_dir / "predictions.png"))
    results = module.test_results
    if "confusion" in results:
        paths.append(plots.confusion_matrix(results["confusion"], names, run_dir / "confusion_matrix.png",
                                            title=f"Test confusion matrix, {title}"))
        paths.append(plots.per_class_accuracy(results["per_class_acc"], names, run_dir / "per_class_accuracy.png",
                                              title=title))
        paths.append(plots.reliability_diagram(results["bins"], results["test/ece"], run_dir / "reliability.png",
                                               title=title))
        table = run_dir / "per_class_accuracy.csv"
        table.write_text("class_id,class,test_acc\n" + "".join(
            f"{i},{name},{acc:.4f}\n" for i, (name, acc) in enumerate(zip(names, results["per_class_acc"]))))
        paths.append(table)
    if module.history:
        paths.append(plots.learning_curves(module.history, run_dir / "curves.png", title=title))
    return paths


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model as `cfg` says; return its metrics (val/acc_best for sweepers).

    SIGINT/SIGTERM end it at any point (signals.py): before the run exists nothing is recorded; after,
    the run is recorded KILLED and last.ckpt resumes it."""
    with INTERRUPTS.installed(), contextlib.ExitStack() as stack:
        return _train(cfg, stack)


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """One process writes a run dir at a time: a second one (the same last.ckpt resumed twice at once) is
    refused in one line instead of both overwriting each other's checkpoints and MLflow run."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".softmax-lab.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{run_dir} is being written by another training process right now. Fix: wait for it "
                              "to end, or train into another hydra.run.dir.") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_pictures(module, datamodule, run_dir: Path, title: str, tracker) -> None:
    """Write the run's pictures and tables into its run dir and log them (pictures/, tables/)."""
    for p in write_pictures(module, datamodule, run_dir, title):
        tracker.log_artifact(p, "tables" if p.suffix == ".csv" else "pictures")


def _train(cfg: DictConfig, stack: contextlib.ExitStack) -> dict[str, float]:
    validate_config(cfg)
    ctx = hydra_context()
    overrides = ctx.get("overrides", [])
    flags = trainer_flags.plan(cfg.trainer, cfg.model.impl, cfg.data.batches_per_step, cfg.callbacks)
    resume = Resume.read(cfg) if cfg.ckpt_path else None
    if resume is not None and resume.run_dir is not None:  # continue in the interrupted run's own dir
        OmegaConf.update(cfg, "paths.output_dir", str(resume.run_dir))
    run_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, verbose=False)

    # Everything that can refuse the config, before any data is read or any run created.
    datamodule = instantiate(cfg.data, **flags.data, _convert_="all")  # plain values: they go into checkpoints
    module = instantiate(cfg.model, num_inputs=datamodule.num_inputs, num_classes=datamodule.num_classes,
                         class_names=datamodule.class_names, **flags.module, _recursive_=False, _convert_="all")
    name = run_name(cfg, overrides)
    if resume is not None:
        resume.check(module.hparams, datamodule.hparams)
    trainer = make_trainer(cfg, flags, make_callbacks(cfg))
    trainer_flags.check_trainer(trainer, flags, cfg.model.impl)
    on_cluster = ctx.get("launcher", "").startswith("hydra_plugins.hydra_submitit")
    if "job_num" in ctx and trainer.world_size > 1 and not on_cluster:
        raise ConfigError(f"trainer: {trainer.world_size} DDP processes inside a local Hydra multirun would each "
                          "re-run the whole sweep (Lightning re-launches the script). Fix: run each job on its own, or "
                          "hydra/launcher=submitit_slurm for DDP jobs on a cluster.")
    # Lightning's fast_dev_run is a smoke test: no logger run and no checkpoints, as Lightning documents
    tracker = instantiate(cfg.logger) if launched_as_rank_zero() and not trainer.fast_dev_run else NoTracking()
    # Creating a fresh sqlite store takes seconds (schema migrations): do it while the data is read. The
    # executor waits for it either way, so a DataError never leaves a half-created store behind.
    with ThreadPoolExecutor(max_workers=1) as pool:
        connecting = pool.submit(tracker.connect)
        datamodule.load()  # read and validate the files: a DataError stops here, before any run exists
        connecting.result()  # an unreachable store stops here, before training
    if resume is not None:
        resume.refuse_if_finished(tracker, cfg)
    if launched_as_rank_zero():
        stack.enter_context(run_dir_lock(run_dir))

    tags = {"overrides": " ".join(overrides) or "(defaults)", "run_dir": str(run_dir),
            "loss": name_of(cfg.loss._target_), "impl": cfg.model.impl,
            "data_dir": str(datamodule.located_dir), **source_tags("src/train.py")}
    if "job_num" in ctx:
        tags.update(sweep_dir=ctx["sweep_dir"], job_num=ctx["job_num"])
    if resume is not None:
        tags["resumed_from"] = str(resume.path)
        print(f"resuming {resume.path}: {resume.epochs_done} epoch(s) done, continuing in {run_dir}", flush=True)
    params = run_params(cfg, ctx.get("choices"))
    try:
        with recorded_run(tracker, name, tags, resume_run_id=resume.run_id if resume else None):
            return fit_test_record(cfg, module, datamodule, tracker, trainer, name, overrides, run_dir, params)
    except (RunInterrupted, KeyboardInterrupt, SIGTERMException) as e:  # recorded KILLED; one type for the CLI
        interrupted = e if isinstance(e, RunInterrupted) else \
            RunInterrupted(signal.SIGTERM if isinstance(e, SIGTERMException) else signal.SIGINT)
        interrupted.recorded = getattr(e, "recorded", False)
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.exists():
            interrupted.resume_hint = f"ckpt_path={last}"
        if interrupted is e:
            raise
        raise interrupted from e
    except OSError as e:  # a full or read-only disk: recorded FAILED above; the user gets one line
        if e.errno in WRITE_ERRNOS:
            raise StorageError.from_os_error(e) from None
        raise


class Resume:
    """ckpt_path=<run dir>/checkpoints/last.ckpt: the run it continues, and what it may and may not change."""

    def __init__(self, path: Path, ckpt: dict):
        self.path, self.ckpt = path, ckpt
        self.run_dir = run_dir_of(ckpt, path)
        self.run_id = ckpt.get("mlflow_run_id")
        self.epochs_done = epochs_done(ckpt)

    @classmethod
    def read(cls, cfg) -> Resume:
        path = Path(cfg.ckpt_path).expanduser()
        return cls(path, read_checkpoint(path))

    def check(self, model_hparams, data_hparams) -> None:
        check_resumable(self.ckpt, self.path, model_hparams, data_hparams)

    def refuse_if_finished(self, tracker, cfg) -> None:
        """Nothing left to train: complete an interrupted run (test, pictures, model); refuse a finished one."""
        max_steps = cfg.trainer.get("max_steps", -1)
        if not nothing_left_to_train(self.ckpt, cfg.trainer.max_epochs, max_steps):
            return
        run = tracker.find_run(self.run_id)
        if run is not None and run.info.status != "FINISHED":
            print(f"nothing left to train in {self.path} (trainer.max_epochs={cfg.trainer.max_epochs}); finishing "
                  f"its {run.info.status} run: testing the best checkpoint", flush=True)
            return
        raise CheckpointError(f"ckpt_path={self.path} has nothing left to train: its run finished "
                              f"{self.epochs_done} epoch(s) and trainer.max_epochs={cfg.trainer.max_epochs}. Fix: "
                              "trainer.max_epochs=<more> to train on, or `python src/eval.py ckpt_path=...` to "
                              "test it again.")


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
    """Lightning's Trainer as configured (flags the module honours by hand replaced), with atomic checkpoint
    writes; the logger is attached once the run exists. Lightning refuses impossible settings here: one
    ConfigError with its reason."""
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=False, plugins=[AtomicCheckpointIO()],
                           **flags.trainer)
    except InstantiationException as e:
        reason = str(e.__cause__ or e).strip()[:600]
        raise ConfigError(f"trainer: {reason} Fix: correct the trainer.* value, or trainer=cpu, which runs anywhere "
                          "(see `python src/train.py --cfg job`).") from None


def fit_test_record(cfg, module, datamodule, tracker, trainer, name, overrides, run_dir, params) -> dict:
    """Fit, test the best checkpoint, write and log the pictures, the model and the checkpoint; the metrics."""
    tracker.log_config(cfg, overrides, run_dir, params)
    trainer.logger = tracker.lightning_logger()
    trainer.callbacks.extend(tracker.callbacks())
    checkpointing = next((c for c in trainer.callbacks
                          if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor), None)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    metrics = scalars(trainer.callback_metrics)
    best = checkpointing.best_model_path if checkpointing is not None else ""
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    metrics.update(scalars(trainer.callback_metrics))
    if trainer.fast_dev_run:
        print(f"fast_dev_run: {int(trainer.fast_dev_run)} batch(es) of training, validation and test ran without "
              f"errors; as Lightning's fast_dev_run, nothing was recorded or checkpointed.", flush=True)
        return metrics
    if trainer.is_global_zero:
        record_pictures(module, datamodule, run_dir, name, tracker)
        tracker.log_model(module, datamodule, params)  # the best checkpoint's weights: test() loaded them
        if best:
            tracker.log_artifact(Path(best), "checkpoints")
        tracker.set_description(run_description(name, metrics, module, best, run_dir, tracker))
        print_summary(metrics, tracker, run_dir, best)
    return metrics


def run_description(name: str, metrics: dict[str, float], module, best: str, run_dir: Path, tracker) -> str:
    """The run's description in the MLflow UI (markdown): its result at a glance and where everything is."""
    def m(key):
        return f"{metrics[key]:.4f}" if key in metrics else "-"

    best_epoch = max(module.history, key=lambda h: h.get("val/acc", -1))["epoch"] + 1 if module.history else "-"
    lines = [f"**{name}**: test accuracy **{m('test/acc')}** (best validation accuracy {m('val/acc_best')} at "
             f"epoch {best_epoch} of {len(module.history)}).", "",
             "| test/acc | test/loss | test/nll | test/ece | test/brier |", "|---|---|---|---|---|",
             f"| {m('test/acc')} | {m('test/loss')} | {m('test/nll')} | {m('test/ece')} | {m('test/brier')} |", "",
             "Pictures: `pictures/curves.png`, `reliability.png`, `per_class_accuracy.png`, `confusion_matrix.png`, "
             "`predictions.png`; per-class accuracy: `tables/per_class_accuracy.csv`.",
             f"Model: `{tracker.model_uri}` (mlflow.pyfunc.load_model)." if tracker.model_uri else "",
             f"Run dir: `{run_dir}`" + (f"; best checkpoint `{Path(best).name}`." if best else ".")]
    return "\n".join(lines)


def print_summary(metrics: dict[str, float], tracker, run_dir: Path, best: str) -> None:
    lines = [
        "  ".join(f"{k} {metrics[k]:.4f}" for k in ("test/acc", "test/loss", "val/acc_best", "test/ece")
                  if k in metrics),
        f"run: {tracker.describe()}",
        f"pictures and config: {run_dir}",
    ]
    if best:
        lines.append(f"best checkpoint: {best}")
    if tracker.model_uri:
        lines.append(f"model: {tracker.model_uri}")
    if tracker.browse_hint():
        lines.append(tracker.browse_hint())
    print("\n".join(lines), flush=True)


def configure_logging_quietly() -> None:
    """Lightning's start-up banners (GPU available, TPU, tips) add nothing for this model, and torch's deprecation
    of LeafSpec, raised inside Lightning's own code, is not the user's to act on."""
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\).*")
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning_fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
