"""What the entry points do with errors: a user's mistake gets its message, a bug its traceback.

In a sweep, a failed job returns NaN so the other jobs go on, and leaves its outcome beside its
output (job_outcome.json): the sweep's summary lists every job it launched, including one refused
before its MLflow run existed (recorded as a FAILED child run where the store is reachable), and the
sweep exits non-zero (see sweep.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from softmax_lab.errors import RunInterrupted, UserError
from softmax_lab.tracking import launched_as_rank_zero

log = logging.getLogger("softmax_lab")

OUTCOME_FILE = "job_outcome.json"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(job: Callable, cfg, objective: str = "val/acc_best") -> float:
    """Run job(cfg) -> metrics; return the objective for sweepers (NaN for a failed sweep job)."""
    outcome = {"status": "FAILED", "reason": "", "metrics": {}}
    try:
        metrics = job(cfg)
        outcome.update(status="FINISHED", metrics=metrics)
        return metrics.get(objective, math.nan)
    except UserError as e:
        outcome["reason"] = str(e)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if launched_as_rank_zero():  # under DDP every process meets the same mistake: say it once
            log.error("error: %s", e)
        if in_multirun():
            if not getattr(e, "recorded", False):
                record_refused_job(cfg, str(e))
            return math.nan
        sys.exit(1)
    except RunInterrupted as e:
        outcome.update(status="KILLED", reason=str(e))
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
        if in_multirun() and launched_as_rank_zero():
            write_outcome(outcome, cfg)


def _what_is_trained(cfg) -> dict[str, str]:
    from softmax_lab.losses import name_of

    try:
        return {"loss": name_of(cfg.loss._target_), "impl": cfg.model.impl}
    except Exception:  # a config broken enough to refuse the job may lack them
        return {}


def write_outcome(outcome: dict, cfg) -> None:
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    path = Path(hc.runtime.output_dir) / OUTCOME_FILE
    record = {"job": hc.job.num, "overrides": " ".join(hc.overrides.task), **_what_is_trained(cfg), **outcome,
              "metrics": {k: v for k, v in outcome["metrics"].items() if isinstance(v, int | float)}}
    try:
        path.write_text(json.dumps(record, indent=1, default=str))
    except OSError as e:
        log.warning("could not write %s (%s): the sweep summary may miss this job", path, e)


def record_refused_job(cfg, reason: str) -> None:
    """A sweep job refused before its run existed still becomes a FAILED child run, with the reason."""
    from softmax_lab.tracking import PARENT_RUN_ENV, SWEPT_KEYS_ENV, MlflowTracker, source_tags

    logger = (cfg.get("logger") if cfg is not None else None) or {}
    if not (str(logger.get("_target_", "")).endswith("MlflowTracker") and os.environ.get(PARENT_RUN_ENV)
            and HydraConfig.initialized()):
        return
    hc = HydraConfig.get()
    swept = os.environ.get(SWEPT_KEYS_ENV, "").split(",")
    overrides = list(hc.overrides.task)
    what = _what_is_trained(cfg)
    head = [f"loss={what['loss']}", f"impl={what['impl']}"] if what else []
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in swept and not o.startswith(("loss=", "impl="))]
    name = " ".join(head + rest) or " ".join(overrides)
    try:
        tracker = MlflowTracker(tracking_uri=logger.get("tracking_uri"), experiment_name=logger.experiment_name)
        tracker.connect()
        tags = {"overrides": " ".join(overrides) or "(defaults)", "job_num": hc.job.num, "sweep_dir": hc.sweep.dir,
                **what, **source_tags("src/train.py")}
        tracker.start_run(name or "(defaults)", tags)
        tracker.finish("FAILED", reason, f"**FAILED before training started**: {reason}")
    except UserError as e:  # the store itself is the problem: the job's outcome file still tells
        log.warning("could not record the refused job in MLflow: %s", e)
