"""A Hydra multirun as one MLflow parent run, with a summary of its jobs at the end.

on_multirun_start creates the store, the experiment and the parent run once, before any job
starts (parallel jobs creating a fresh sqlite store race on its schema), and exports the parent's
id; every job's run carries it as `mlflow.parentRunId`. on_multirun_end reads the children back
from MLflow, whatever launcher ran them and however they ended, and writes the summary: a csv, a
markdown table and a chart, into the sweep dir and onto the parent run.
"""

from __future__ import annotations

import csv
import logging
import os
import statistics
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from softmax_lab.tracking import PARENT_RUN_ENV, connect, resolve_tracking_uri
from softmax_lab.training import SWEPT_KEYS_ENV

log = logging.getLogger(__name__)

FAILED_JOBS = 0  # read by src/train.py to exit non-zero when a job failed
COLUMNS = ["job", "overrides", "loss", "impl", "status", "val_acc_best", "test_acc", "epoch_s", "run_id",
           "failure_reason"]


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies: `key=a,b`, `key=range(...)`/`choice(...)`, and a sweeper's own params (Optuna)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [o.key_or_group for o in parsed if o.is_sweep_override()]
    return keys + list((config.hydra.sweeper.get("params") or {}).keys())


def summary_rows(client, experiment_id: str, parent_run_id: str) -> list[dict]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=10000)
    rows = []
    for r in runs:
        m, t = r.data.metrics, r.data.tags
        epochs = [x.value for x in client.get_metric_history(r.info.run_id, "time/epoch_s")]
        rows.append({
            "job": int(t.get("job_num", -1)), "overrides": t.get("overrides", ""), "loss": t.get("loss", "?"),
            "impl": t.get("impl", "?"), "status": r.info.status, "val_acc_best": m.get("val/acc_best"),
            "test_acc": m.get("test/acc"), "epoch_s": statistics.median(epochs) if epochs else None,
            "run_id": r.info.run_id, "failure_reason": t.get("failure_reason", "")[:200],
        })
    return sorted(rows, key=lambda r: r["job"])


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict], columns=COLUMNS[:8]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) if r[c] is not None else "-" for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(rows: list[dict], sweep_dir: Path) -> list[Path]:
    from softmax_lab.plots import sweep_chart

    sweep_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = sweep_dir / "sweep_summary.csv", sweep_dir / "sweep_summary.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text("# Sweep summary\n\n" + markdown_table(rows))
    return [csv_path, md_path, sweep_chart(rows, sweep_dir / "sweep_summary.png")]


class MlflowSweepCallback(Callback):
    """conf/hydra/default.yaml installs it; it does nothing in a single run or with logger=none."""

    def __init__(self):
        self.client = self.experiment_id = self.parent_run_id = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # so ${hydra:...} resolves here
        if not str(config.logger.get("_target_", "")).endswith("MlflowTracker"):
            return
        uri = resolve_tracking_uri(config.logger.get("tracking_uri"))
        self.client, self.experiment_id = connect(uri, config.logger.experiment_name)
        task = list(config.hydra.overrides.task)
        run = self.client.create_run(self.experiment_id, run_name="sweep: " + (" ".join(task) or "(defaults)"),
                                     tags={"sweep_dir": str(config.hydra.sweep.dir), "overrides": " ".join(task),
                                           "sweeper": config.hydra.sweeper.get("_target_", ""),
                                           "launcher": config.hydra.launcher.get("_target_", "")})
        self.parent_run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept_keys(config))
        log.info("sweep recorded as MLflow parent run %s", self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global FAILED_JOBS
        if self.parent_run_id is None:
            return
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(SWEPT_KEYS_ENV, None)
        try:
            rows = summary_rows(self.client, self.experiment_id, self.parent_run_id)
            FAILED_JOBS = sum(r["status"] != "FINISHED" for r in rows)
            sweep_dir = Path(str(config.hydra.sweep.dir))
            files = write_summary(rows, sweep_dir)
            files += [p for p in [sweep_dir / "optimization_results.yaml"] if p.exists()]  # Optuna's best params
            for p in files:
                self.client.log_artifact(self.parent_run_id, str(p), "summary")
            self.client.set_tag(self.parent_run_id, "jobs", len(rows))
            self.client.set_tag(self.parent_run_id, "failed_jobs", FAILED_JOBS)
            print(f"\nSweep summary ({len(rows)} jobs, {FAILED_JOBS} failed; files in {config.hydra.sweep.dir}):\n"
                  + markdown_table(rows), flush=True)
            self.client.set_terminated(self.parent_run_id, "FINISHED")
        except BaseException:
            self.client.set_terminated(self.parent_run_id, "FAILED")
            raise
