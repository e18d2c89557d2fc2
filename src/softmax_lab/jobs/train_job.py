"""train(cfg): check and build -> read the data -> fit -> test the best checkpoint -> pictures, model and description.

Everything a user can get wrong is refused before any data is read or any MLflow run is created; after that,
whatever happens is recorded: FINISHED, FAILED (with the reason) or KILLED (with how to resume).
"""

from __future__ import annotations

import contextlib
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from softmax_lab.console import quiet_console, shell_word
from softmax_lab.errors import WRITE_ERRNOS, ConfigError, RunInterrupted, StorageError, StoreGone
from softmax_lab.jobs.run_report import model_example, print_summary, run_description, scalars, write_run_config
from softmax_lab.jobs.training_run import TrainingRun, checked_run, epoch_limit, run_tags
from softmax_lab.maths.classifier import classifier_of
from softmax_lab.pictures.run_pictures import write_run_pictures
from softmax_lab.search.pruning import TrialPruning
from softmax_lab.signals import INTERRUPTS
from softmax_lab.tracking.logger import UNSENT
from softmax_lab.tracking.run import recorded_run
from softmax_lab.tracking.run_fields import run_params
from softmax_lab.trainer.processes import stop_other_ranks


def train(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, float]:
    """Train and test one model as `cfg` says; return its metrics (val/acc_best for sweepers). `overrides`: what
    the run's name and tags say was changed, outside a Hydra app (jobs/api.py); inside one, Hydra's.

    SIGINT/SIGTERM end it at any point (signals.py): before the run exists nothing is recorded; after,
    the run is recorded KILLED and last.ckpt resumes it."""
    quiet_console()  # also in a launcher's worker process (Ray), which the entry point never ran in
    with INTERRUPTS.installed(), contextlib.ExitStack() as stack:
        run = checked_run(cfg, list(overrides))  # built and checked: no data read, no run recorded
        read_data_while_connecting(run)  # a DataError or a store that cannot be reached stops here
        if run.resume is not None:
            continue_resumed(run)
        if run.leads:
            stack.enter_context(run_dir_lock(run.run_dir))
        if run.resume is not None:
            print(f"resuming {run.resume.path}: {run.resume.epochs_done} epoch(s) done, continuing in {run.run_dir}",
                  flush=True)
        tags, params = run_tags(run), run_params(cfg, run.loss_name, run.ctx.get("choices"))
        resumed_run_id = run.resume.run_id if run.resume is not None else None
        with said_in_one_line(run), recorded_run(run.tracker, run.name, tags, resumed_run_id, run.resume_hint):
            log_inputs(run, params)
            metrics = fit(run)
            metrics.update(test(run, params))
            if run.trainer.fast_dev_run:
                print(f"fast_dev_run: {int(run.trainer.fast_dev_run)} batch(es) of training, validation and test ran "
                      f"without errors; as Lightning's fast_dev_run, nothing was recorded or checkpointed.", flush=True)
            elif run.leads:
                record_outputs(run, metrics)
            return metrics


def read_data_while_connecting(run: TrainingRun) -> None:
    """Read and check the data files while the store connects (creating a fresh sqlite store takes time). The
    executor waits for the connection either way, so a DataError never leaves a half-created store behind."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        connecting = pool.submit(run.tracker.connect)
        run.datamodule.load()
        connecting.result()
    run.phases.mark("build, data and store")


def continue_resumed(run: TrainingRun) -> None:
    """A finished run is refused (nothing left to train); a killed one past a smaller max_epochs finishes."""
    if run.leads:  # it decides, from its run's status; the other DDP ranks exist only because it went on to fit
        run.resume.refuse_if_finished(run.tracker, epoch_limit(run), run.cfg.trainer.get("max_steps", -1))
    if 0 <= epoch_limit(run) < run.resume.epochs_done:  # finishing a killed run past a smaller limit: Lightning
        run.trainer.fit_loop.max_epochs = run.resume.epochs_done  # refuses to restore it, so the limit is where it is


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


@contextlib.contextmanager
def said_in_one_line(run: TrainingRun):
    """What ends a recorded run early, as the one line the command prints: a signal (one type, with its resume
    command), a tracking server gone (where the measurements are kept), a full or read-only disk."""
    try:
        yield
    except (RunInterrupted, KeyboardInterrupt, SIGTERMException) as e:  # recorded KILLED
        stop_other_ranks(run.trainer)  # under DDP, rank 0 ends the processes it launched
        interrupted = e if isinstance(e, RunInterrupted) else \
            RunInterrupted(signal.SIGTERM if isinstance(e, SIGTERMException) else signal.SIGINT)
        interrupted.recorded = getattr(e, "recorded", False)
        if run.last_checkpoint.exists():
            interrupted.resume_hint = shell_word(run.resume_override)
        if interrupted is e:
            raise
        raise interrupted from e
    except StoreGone as e:  # everything measured stays in the run dir; the resume sends it
        raise StoreGone(f"{e}. What the run measured is kept in {run.run_dir}: its checkpoints, and the metrics not "
                        f"sent in {UNSENT}. Fix: start the tracking server again (or fix the network), then resume: "
                        f"{run.resume_command}; the resume sends them.") from e
    except OSError as e:  # a full or read-only disk: recorded FAILED; the user gets one line
        if e.errno in WRITE_ERRNOS:
            raise StorageError.from_os_error(e) from e
        raise


def log_inputs(run: TrainingRun, params: dict[str, str]) -> None:
    """The run's config files, params and datasets; Lightning's logger writing into the run."""
    if run.leads:  # the run dir has one writer
        for path in write_run_config(run.run_dir, run.cfg, run.overrides):
            run.tracker.log_artifact(path)
    run.tracker.log_params(params)
    if run.cfg.ckpt_path is None:  # a resumed run holds its inputs already
        run.tracker.log_datasets(run.datamodule)
    run.trainer.logger = run.tracker.lightning_logger(spool=run.run_dir / UNSENT)
    run.trainer.callbacks.extend(run.tracker.callbacks())
    run.phases.mark("run records (config, params, datasets)")


def fit(run: TrainingRun) -> dict[str, float]:
    """Lightning's fit (from ckpt_path when resuming); its metrics. A trial the search pruned is tagged so."""
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.cfg.ckpt_path, weights_only=True)
    run.phases.mark("fit")
    pruned = pruned_at(run)
    if pruned is not None and run.leads:  # ran fewer epochs on purpose: it says so, and is tested as is
        run.tracker.set_tags({"optuna_state": "PRUNED", "pruned_at_epoch": pruned})
        run.tracker.state = "pruned"  # its state tag when it ends (tracking/run.py)
    return scalars(run.trainer.callback_metrics)


def test(run: TrainingRun, params: dict[str, str]) -> dict[str, float]:
    """The best checkpoint (by val/acc; the last weights without one) on the test set; its metrics, logged linked
    to the run's model."""
    if run.tracker.enabled and run.leads and not run.trainer.fast_dev_run:
        run.tracker.start_model(run.name, params)
    run.trainer.test(run.module, datamodule=run.datamodule, ckpt_path=best_checkpoint(run) or None, verbose=False,
                     weights_only=True)
    run.phases.mark("test")
    return scalars(run.trainer.callback_metrics)


def record_outputs(run: TrainingRun, metrics: dict[str, float]) -> None:
    """The pictures, the model, the best checkpoint and the description into the run; the summary printed."""
    tracker, best, pruned, history = run.tracker, best_checkpoint(run), pruned_at(run), run.recorder.history
    for p in pictures_while_logging_model(run, metrics):
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


def pictures_while_logging_model(run: TrainingRun, metrics: dict[str, float]) -> list[Path]:
    """The pictures are drawn (matplotlib, files only) in a thread while this one packages and logs the model from
    the best checkpoint's weights (test() loaded them). A signal (raised in this thread, even while it waits for
    the drawing) does not wait for the drawing to end."""
    module, datamodule = run.module, run.datamodule
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pictures")
    try:
        drawing = pool.submit(write_run_pictures, module, datamodule, run.recorder.history, run.run_dir, run.name)
        if run.tracker.enabled:
            classifier = classifier_of(module.state_dict(), module.impl, datamodule.class_names, datamodule.resize,
                                       datamodule.mean, datamodule.std)
            run.tracker.log_model(classifier, model_example(datamodule), module.global_step,
                                  {k: v for k, v in metrics.items() if k.startswith("test/")})
        pictures = drawing.result()
    finally:
        pool.shutdown(wait=False)
    run.phases.mark("pictures (drawn) and model (logged), side by side")
    return pictures


def best_checkpoint(run: TrainingRun) -> str:
    """The best checkpoint's path by the monitored metric; '' when nothing monitors one."""
    checkpointing = next((c for c in run.trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    return checkpointing.best_model_path if checkpointing is not None else ""


def pruned_at(run: TrainingRun) -> int | None:
    """The epoch after which the search pruned this trial; None when it was not pruned."""
    return next((c.pruned_at for c in run.trainer.callbacks if isinstance(c, TrialPruning) and c.pruned_at), None)
