"""Which process this is, and ending the others: under DDP only rank 0 writes (MLflow, the run dir), and an
interrupt of rank 0 ends every rank, each in one line, instead of leaving them in a collective."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

log = logging.getLogger(__name__)

GRACE_S = 3  # for the other ranks to end on SIGTERM before they are killed


def launched_as_rank_zero() -> bool:
    """Whether this process is global rank 0, read from the launcher's environment (Lightning's DDP children,
    torchrun, SLURM) before any Trainer exists."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def stop_other_ranks(trainer) -> None:
    """The processes Lightning launched for the other ranks get SIGTERM: a rank that is computing ends with its own
    one line. A rank waiting for this one in a collective cannot run a signal handler until the collective returns
    (gloo waits up to 30 minutes): after a short grace it is killed, as Lightning kills them on Ctrl-C (only rank 0
    writes, so nothing is lost), and reaped. A no-op without such processes."""
    procs = [p for p in getattr(trainer.strategy.launcher, "procs", None) or [] if p.poll() is None]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.debug("rank process %d waits in a collective: killed", p.pid)
            p.kill()
            p.wait()


def descendants(pid: int | None = None) -> list[int]:
    """The processes started by `pid` (this one by default) and by them, read from /proc ([] where there is none):
    a sweep's launcher workers and the jobs they run."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # after the command's name, which may hold spaces
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid or os.getpid()]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found
