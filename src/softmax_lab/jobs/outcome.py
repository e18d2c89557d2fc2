"""What an entry point does with a job's outcome: a user's mistake gets its message, a bug its traceback, an
interrupt its exit code (130 / 143).

In a sweep, a failed job returns NaN so the other jobs go on, and leaves its outcome beside its output
(tracking/sweep_jobs.py): the sweep's summary lists every job it launched, including one refused
before its MLflow run existed (recorded as a FAILED child run where the store is reachable), and the
sweep exits non-zero (tracking/sweep.py). Under DDP every process meets the same mistake: it is said once.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf.errors import OmegaConfBaseException

from softmax_lab.console import quiet_log_files
from softmax_lab.errors import RunInterrupted, UserError
from softmax_lab.jobs.naming import in_multirun, run_name
from softmax_lab.tracking.sweep_jobs import write_outcome
from softmax_lab.trainer.processes import launched_as_rank_zero

log = logging.getLogger("softmax_lab")


def run_job(job: Callable, cfg, objective: str = "val/acc_best") -> float:
    """Run job(cfg) -> metrics; return the objective for sweepers (NaN for a failed sweep job)."""
    quiet_log_files()  # Hydra has just set up this job's log file
    outcome = {"status": "FAILED", "reason": "", "metrics": {}}
    rank_zero = launched_as_rank_zero()
    try:
        metrics = job(cfg)
        outcome.update(status="FINISHED", metrics=metrics)
        return metrics.get(objective, math.nan)
    except UserError as e:
        outcome["reason"] = str(e)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if rank_zero:
            log.error("error: %s", e)
        if in_multirun():
            if not getattr(e, "recorded", False):
                record_refused_job(cfg, str(e))
            return math.nan
        sys.exit(1)
    except RunInterrupted as e:
        outcome.update(status="KILLED", reason=str(e))
        if not rank_zero:  # rank 0 records the run and says so
            log.error("rank %s: %s", os.environ.get("RANK", "?"), e)
            sys.exit(e.exit_code)
        what = "the run is recorded KILLED" if getattr(e, "recorded", False) else "nothing was recorded"
        resume = getattr(e, "resume_hint", None)
        log.error("%s: %s%s", e, what, f"; resume with {resume}" if resume else "")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # before our handler was installed (start-up)
        outcome.update(status="KILLED", reason="interrupted")
        log.error("interrupted before training started; nothing was recorded")
        sys.exit(130)
    except Exception as e:
        outcome["reason"] = f"{type(e).__name__}: {e}"
        if in_multirun():
            log.exception("this job failed (recorded FAILED); the sweep goes on")
            return math.nan
        raise
    finally:
        if in_multirun() and rank_zero:
            _write_outcome(outcome, cfg)


def _what_is_trained(cfg) -> dict[str, str]:
    from softmax_lab.maths.losses import name_of

    try:
        return {"loss": name_of(cfg.loss._target_), "impl": cfg.model.impl}
    except (AttributeError, KeyError, TypeError, OmegaConfBaseException):  # a config refused may be that broken
        return {}


def _write_outcome(outcome: dict, cfg) -> None:
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    record = {"job": hc.job.num, "overrides": " ".join(hc.overrides.task), **_what_is_trained(cfg), **outcome,
              "metrics": {k: v for k, v in outcome["metrics"].items() if isinstance(v, int | float)}}
    try:
        write_outcome(Path(hc.runtime.output_dir), record)
    except OSError as e:
        log.warning("could not write the job's outcome into %s (%s): the sweep summary may miss this job",
                    hc.runtime.output_dir, e)


def record_refused_job(cfg, reason: str) -> None:
    """A sweep job refused before its run existed still becomes a FAILED child run, with the reason."""
    from softmax_lab.tracking.run import MlflowTracker
    from softmax_lab.tracking.run_fields import source_tags
    from softmax_lab.tracking.sweep_jobs import SweepLink

    logger = (cfg.get("logger") if cfg is not None else None) or {}
    if not (str(logger.get("_target_", "")).endswith("MlflowTracker") and SweepLink.of_this_job().parent_run_id
            and HydraConfig.initialized()):
        return
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    what = _what_is_trained(cfg)
    name = run_name(what["loss"], what["impl"], overrides) if what else " ".join(overrides)
    try:
        tracker = MlflowTracker(tracking_uri=logger.get("tracking_uri"), experiment_name=logger.experiment_name)
        tracker.connect()
        tags = {"kind": "train", "overrides": " ".join(overrides) or "(defaults)", "job_num": hc.job.num,
                "sweep_dir": hc.sweep.dir, **what, **source_tags("src/train.py")}
        tracker.start_run(name or "(defaults)", tags)
        tracker.finish("FAILED", reason, f"**FAILED before training started**: {reason}")
    except UserError as e:  # the store itself is the problem: the job's outcome file still tells
        log.warning("could not record the refused job in MLflow: %s", e)
