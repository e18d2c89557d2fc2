"""Where a run's seconds go, phase by phase, written to <run dir>/phases.json at its end: `make bench` reads it to
show the breakdown of a default run and of a sweep job (docs/speed.md)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from softmax_lab.files import write_text

PHASES_FILE = "phases.json"


def process_age() -> float | None:
    """Seconds since this process started (Linux's /proc), None where that cannot be read."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


class Phases:
    """Wall seconds between marks: mark(name) ends the phase called `name`."""

    def __init__(self, since_process_start: bool = True):
        self.seconds: dict[str, float] = {}
        before = process_age() if since_process_start else None
        if before is not None:  # the interpreter, the imports and Hydra, before the job began
            self.seconds["start-up (interpreter, imports, config)"] = round(before, 3)
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 3)
        self._last = now

    def write(self, run_dir: Path, epochs_s: list[float]) -> Path:
        record = {"phases_s": self.seconds, "epochs_s": round(sum(epochs_s), 3), "epochs": len(epochs_s)}
        return write_text(Path(run_dir) / PHASES_FILE, json.dumps(record, indent=1))
