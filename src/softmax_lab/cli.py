"""What the entry points do with errors: a user's mistake gets its message, a bug its traceback.

In a sweep, a failed job (already recorded FAILED in MLflow) returns NaN so the other jobs go on;
the sweep then exits non-zero (see sweep.py).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from softmax_lab.errors import RunInterrupted, UserError
from softmax_lab.tracking import launched_as_rank_zero

log = logging.getLogger("softmax_lab")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(job: Callable, cfg, objective: str = "val/acc_best") -> float:
    """Run job(cfg) -> metrics; return the objective for sweepers (NaN for a failed sweep job)."""
    try:
        return job(cfg).get(objective, math.nan)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if launched_as_rank_zero():  # under DDP every process meets the same mistake: say it once
            log.error("error: %s", e)
        if in_multirun():
            return math.nan
        sys.exit(1)
    except RunInterrupted as e:
        log.error("%s: the run is recorded KILLED; resume with ckpt_path=<run dir>/checkpoints/last.ckpt", e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # during start-up, before any run exists
        log.error("interrupted before training started; nothing was recorded")
        sys.exit(130)
    except Exception:
        if in_multirun():
            log.exception("this job failed (recorded FAILED); the sweep goes on")
            return math.nan
        raise
