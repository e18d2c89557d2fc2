"""Which process this is, and ending the others: under DDP only rank 0 writes (MLflow, the run dir), and an
interrupt of rank 0 ends every rank, each in one line, instead of leaving them in a collective."""

from __future__ import annotations

import logging
import os
import signal
import subprocess

log = logging.getLogger(__name__)

GRACE_S = 10  # for the other ranks to end on SIGTERM before they are killed


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0, read from the launcher's environment (Lightning's DDP children,
    torchrun, SLURM) before any Trainer exists."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def stop_other_ranks(trainer) -> None:
    """The processes Lightning launched for the other ranks get SIGTERM (each ends in one line); this process
    leaves the process group, so a rank waiting for it in a collective gets out of it; one still running after
    a grace period is killed. A no-op without such processes."""
    import torch.distributed as dist

    procs = [p for p in getattr(trainer.strategy.launcher, "procs", None) or [] if p.poll() is None]
    if not procs:
        return
    for p in procs:
        p.send_signal(signal.SIGTERM)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for p in procs:
        try:
            p.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("rank process %d did not end on SIGTERM within %d s: killed", p.pid, GRACE_S)
            p.kill()
