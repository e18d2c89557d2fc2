"""train(cfg): validate -> build -> fit -> test the best checkpoint -> pictures and model -> MLflow.

Everything a user can get wrong is checked before any data is read or any MLflow run is created;
after that, whatever happens is recorded: FINISHED, FAILED (with the reason) or KILLED.
"""

from __future__ import annotations

import contextlib
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
from filelock import FileLock, Timeout
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from softmax_lab.config import instantiate_checked, validate_config
from softmax_lab.console import hydra_override, pasteable, quiet_console, shell_word
from softmax_lab.errors import WRITE_ERRNOS, ConfigError, RunInterrupted, StorageError, StoreGone
from softmax_lab.jobs.naming import check_run_dir, hydra_context, run_name
from softmax_lab.jobs.phases import Phases
from softmax_lab.jobs.resume import Resume
from softmax_lab.jobs.run_report import (
    model_example,
    print_summary,
    run_description,
    scalars,
    write_run_config,
)
from softmax_lab.maths.classifier import classifier_of
from softmax_lab.maths.losses import name_of
from softmax_lab.pictures.run_pictures import write_run_pictures
from softmax_lab.search.pruning import TrialPruning
from softmax_lab.signals import INTERRUPTS
from softmax_lab.tracking.logger import UNSENT
from softmax_lab.tracking.run import NoTracking, recorded_run
from softmax_lab.tracking.run_fields import run_params, source_tags
from softmax_lab.trainer.build import make_callbacks, make_trainer
from softmax_lab.trainer.epoch_record import EpochRecorder
from softmax_lab.trainer.flags import check_trainer, plan
from softmax_lab.trainer.processes import launched_as_rank_zero, stop_other_ranks


def train(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, float]:
    """Train and test one model as `cfg` says; return its metrics (val/acc_best for sweepers). `overrides`: what
    the run's name and tags say was changed, outside a Hydra app (jobs/api.py); inside one, Hydra's.

    SIGINT/SIGTERM end it at any point (signals.py): before the run exists nothing is recorded; after,
    the run is recorded KILLED and last.ckpt resumes it."""
    quiet_console()  # also in a launcher's worker process (Ray), which the entry point never ran in
    with INTERRUPTS.installed(), contextlib.ExitStack() as stack:
        return _train(cfg, stack, list(overrides))


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """One process writes a run dir at a time: a second one (the same last.ckpt resumed twice at once) is
    refused in one line instead of both overwriting each other's checkpoints and MLflow run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / ".softmax-lab.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout as e:
        raise ConfigError(f"{run_dir} is being written by another training process right now. Fix: wait for it "
                          "to end, or train into another hydra.run.dir.") from e
    try:
        yield
    finally:
        lock.release()


@dataclass
class TrainingRun:
    """The pieces of one training run, built and checked before its MLflow run exists."""

    cfg: DictConfig
    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    trainer: pl.Trainer
    name: str
    loss_name: str
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    tracker: object = field(default_factory=NoTracking)
    phases: Phases = field(default_factory=Phases)  # where the run's seconds go (phases.json, make bench)

    @property
    def recorder(self) -> EpochRecorder:
        return next(c for c in self.trainer.callbacks if isinstance(c, EpochRecorder))


def epoch_limit(run: TrainingRun) -> int:
    """trainer.max_epochs, or Lightning's own default when `~trainer.max_epochs` deleted it (set at fit: 1000 epochs,
    or none when max_steps bounds the run)."""
    limit = run.cfg.trainer.get("max_epochs", run.trainer.max_epochs)
    return limit if limit is not None else 1000 if run.cfg.trainer.get("max_steps", -1) == -1 else -1


def build_run(cfg: DictConfig, overrides: list[str] = (), phases: Phases | None = None) -> TrainingRun:
    """What `cfg` trains, built and checked, before any data is read or any run exists: the data module and the
    module (seeded), the Trainer with the flags the module honours by hand taken out (trainer/flags.py), a
    strategy that cannot train the module refused. ConfigError for anything that cannot be honoured."""
    validate_config(cfg)
    flags = plan(cfg.trainer, cfg.model.impl, cfg.data.batches_per_step, cfg.get("callbacks") or {})
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate_checked(cfg.data, **flags.data, _convert_="all")  # plain values: into checkpoints
    module = instantiate_checked(cfg.model, num_inputs=datamodule.num_inputs, num_classes=datamodule.num_classes,
                                 class_names=datamodule.class_names, **flags.module, _recursive_=False,
                                 _convert_="all")
    trainer = make_trainer(cfg.trainer, flags.trainer, make_callbacks(cfg))
    check_trainer(trainer, flags, cfg.model.impl)
    loss_name = name_of(cfg.loss._target_)
    return TrainingRun(cfg, module, datamodule, trainer, run_name(loss_name, cfg.model.impl, list(overrides)),
                       loss_name, Path(cfg.paths.output_dir), list(overrides), phases=phases or Phases())


def _train(cfg: DictConfig, stack: contextlib.ExitStack, overrides: list[str]) -> dict[str, float]:
    check_run_dir(cfg)
    ctx = hydra_context() or {"overrides": overrides}
    resume = Resume.read(cfg.ckpt_path) if cfg.ckpt_path else None
    if resume is not None and resume.run_dir is not None:  # continue in the interrupted run's own dir
        OmegaConf.update(cfg, "paths.output_dir", str(resume.run_dir))
    # the clock from the process's start; a sweep's later jobs from their own
    run = build_run(cfg, ctx.get("overrides", []), Phases(since_process_start=ctx.get("job_num", 0) == 0))
    if resume is not None:
        resume.check(run.module.hparams, run.datamodule.hparams)
    on_cluster = ctx.get("launcher", "").startswith("hydra_plugins.hydra_submitit")
    if "job_num" in ctx and run.trainer.world_size > 1 and not on_cluster:
        raise ConfigError(f"trainer: {run.trainer.world_size} DDP processes inside a local Hydra multirun would each "
                          "re-run the whole sweep (Lightning re-launches the script). Fix: run each job on its own, or "
                          "hydra/launcher=submitit_slurm for DDP jobs on a cluster.")
    # Lightning's fast_dev_run is a smoke test: no logger run and no checkpoints, as Lightning documents
    rank_zero = launched_as_rank_zero()
    if rank_zero and not run.trainer.fast_dev_run:
        run.tracker = instantiate(cfg.logger)
    # Creating a fresh sqlite store takes time: do it while the data is read. The executor waits for it either
    # way, so a DataError never leaves a half-created store behind.
    with ThreadPoolExecutor(max_workers=1) as pool:
        connecting = pool.submit(run.tracker.connect)
        run.datamodule.load()  # read and validate the files: a DataError stops here, before any run exists
        connecting.result()  # an unreachable store stops here, before training
    run.phases.mark("build, data and store")
    if resume is not None:
        if rank_zero:  # it decides, from its run's status; the other DDP ranks exist only because it went on to fit
            resume.refuse_if_finished(run.tracker, epoch_limit(run), cfg.trainer.get("max_steps", -1))
        if 0 <= epoch_limit(run) < resume.epochs_done:  # finishing a killed run past a smaller limit: Lightning
            run.trainer.fit_loop.max_epochs = resume.epochs_done  # refuses to restore it, so the limit is where it is
    if rank_zero:
        stack.enter_context(run_dir_lock(run.run_dir))

    tags = {"kind": "train", "overrides": " ".join(run.overrides) or "(defaults)", "run_dir": str(run.run_dir),
            "loss": run.loss_name,
            "impl": cfg.model.impl, "data_dir": str(run.datamodule.located_dir), **source_tags("src/train.py")}
    if "job_num" in ctx:
        tags.update(sweep_dir=ctx["sweep_dir"], job_num=ctx["job_num"])
    if OmegaConf.select(cfg, "search.trial") is not None:  # a trial of an Optuna search (hparams_search=optuna)
        study = next((c.study_name for c in run.trainer.callbacks if isinstance(c, TrialPruning)), "")
        tags.update(optuna_trial=cfg.search.trial, optuna_study=study)
    if resume is not None:
        tags["resumed_from"] = str(resume.path)
        print(f"resuming {resume.path}: {resume.epochs_done} epoch(s) done, continuing in {run.run_dir}", flush=True)
    params = run_params(cfg, run.loss_name, ctx.get("choices"))
    last = run.run_dir / "checkpoints" / "last.ckpt"
    resume_override = hydra_override("ckpt_path", last)
    command = pasteable("src/train.py", [*[o for o in run.overrides if not o.startswith("ckpt_path=")],
                                         resume_override])

    def resume_hint() -> str:
        """A killed run's description: how far it got and the command that continues it."""
        epochs, done = epoch_limit(run), len(run.recorder.history)
        stopped = f"stopped after epoch {done}" + (f" of {epochs}" if epochs and epochs > 0 else "") + \
            f" (step {run.trainer.global_step})"
        if not last.exists():
            return f"{stopped}, before its first checkpoint: nothing to resume from. Run the same command again."
        return f"{stopped}. What it measured until then is kept. Resume it from its last checkpoint: `{command}`"
    try:
        with recorded_run(run.tracker, run.name, tags, resume.run_id if resume else None, resume_hint):
            return fit_test_record(run, params)
    except (RunInterrupted, KeyboardInterrupt, SIGTERMException) as e:  # recorded KILLED; one type for the CLI
        stop_other_ranks(run.trainer)  # under DDP, rank 0 ends the processes it launched
        interrupted = e if isinstance(e, RunInterrupted) else \
            RunInterrupted(signal.SIGTERM if isinstance(e, SIGTERMException) else signal.SIGINT)
        interrupted.recorded = getattr(e, "recorded", False)
        if last.exists():
            interrupted.resume_hint = shell_word(resume_override)
        if interrupted is e:
            raise
        raise interrupted from e
    except StoreGone as e:  # everything measured stays in the run dir; the resume sends it
        raise StoreGone(f"{e}. What the run measured is kept in {run.run_dir}: its checkpoints, and the metrics not "
                        f"sent in {UNSENT}. Fix: start the tracking server again (or fix the network), then resume: "
                        f"{command}; the resume sends them.") from e
    except OSError as e:  # a full or read-only disk: recorded FAILED above; the user gets one line
        if e.errno in WRITE_ERRNOS:
            raise StorageError.from_os_error(e) from e
        raise


def fit_test_record(run: TrainingRun, params: dict[str, str]) -> dict[str, float]:
    """Fit, test the best checkpoint, write and log the pictures, the model and the checkpoint; the metrics."""
    cfg, module, datamodule, trainer, tracker = run.cfg, run.module, run.datamodule, run.trainer, run.tracker
    if launched_as_rank_zero():  # the run dir has one writer
        for path in write_run_config(run.run_dir, cfg, run.overrides):
            tracker.log_artifact(path)
    tracker.log_params(params)
    if cfg.ckpt_path is None:  # a resumed run holds its inputs already
        tracker.log_datasets(datamodule)
    trainer.logger = tracker.lightning_logger(spool=run.run_dir / UNSENT)
    trainer.callbacks.extend(tracker.callbacks())
    checkpointing = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    run.phases.mark("run records (config, params, datasets)")
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    run.phases.mark("fit")
    metrics = scalars(trainer.callback_metrics)
    pruned = next((c.pruned_at for c in trainer.callbacks if isinstance(c, TrialPruning) and c.pruned_at), None)
    if pruned is not None and trainer.is_global_zero:  # ran fewer epochs on purpose: it says so, and is tested as is
        tracker.set_tags({"optuna_state": "PRUNED", "pruned_at_epoch": pruned})
        tracker.state = "pruned"  # its state tag when it ends (tracking/run.py)
    best = checkpointing.best_model_path if checkpointing is not None else ""
    if tracker.enabled and trainer.is_global_zero and not trainer.fast_dev_run:
        tracker.start_model(run.name, params)  # the test metrics are logged linked to the run's model
    trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    run.phases.mark("test")
    metrics.update(scalars(trainer.callback_metrics))
    if trainer.fast_dev_run:
        print(f"fast_dev_run: {int(trainer.fast_dev_run)} batch(es) of training, validation and test ran without "
              f"errors; as Lightning's fast_dev_run, nothing was recorded or checkpointed.", flush=True)
        return metrics
    if trainer.is_global_zero:
        history = run.recorder.history
        # the pictures are drawn (matplotlib, files only) while this thread packages and logs the model; a signal
        # (raised in this thread, even while it waits for the drawing) does not wait for the drawing to end
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pictures")
        try:
            drawing = pool.submit(write_run_pictures, module, datamodule, history, run.run_dir, run.name)
            if tracker.enabled:  # the best checkpoint's weights: test() loaded them
                classifier = classifier_of(module.state_dict(), module.impl, datamodule.class_names,
                                           datamodule.resize, datamodule.mean, datamodule.std)
                tracker.log_model(classifier, model_example(datamodule), module.global_step,
                                  {k: v for k, v in metrics.items() if k.startswith("test/")})
            pictures = drawing.result()
        finally:
            pool.shutdown(wait=False)
        run.phases.mark("pictures (drawn) and model (logged), side by side")
        for p in pictures:
            tracker.log_artifact(p, "tables" if p.suffix == ".csv" else "pictures")
        if best:
            tracker.log_artifact(Path(best), "checkpoints")
        description = run_description(run.name, metrics, history, tracker.model_uri, best, run.run_dir)
        if pruned is not None:
            description = (f"**Pruned** by the Optuna search after epoch {pruned} of {epoch_limit(run)}: its "
                           f"val/acc was below what the study's pruner lets go on.\n\n{description}")
        tracker.set_description(description)
        run.phases.mark("artifacts and description")
        run.phases.write(run.run_dir, [h.get("time/epoch_s", 0.0) for h in history])
        print_summary(metrics, tracker, run.run_dir, best)
    return metrics
