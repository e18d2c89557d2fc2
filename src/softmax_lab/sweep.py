"""A Hydra multirun as one MLflow parent run that tells the sweep's result, with a summary of every job.

on_multirun_start creates the store, the experiment and the parent run once, before any job starts
(parallel jobs creating a fresh sqlite store race on its schema), records what the sweep varies as
the parent's params, and exports the parent's id: every job's run carries it as `mlflow.parentRunId`.
on_multirun_end reads the children back from MLflow, whatever launcher ran them and however they
ended, adds the jobs that never got a run from their job_outcome.json (cli.py), and writes the
summary: a csv, a markdown table and a chart, into the sweep dir and onto the parent, whose metrics,
tags and description then give the best job. The sweep exits non-zero when any job did not finish.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from softmax_lab.cli import OUTCOME_FILE
from softmax_lab.signals import protected
from softmax_lab.tracking import (
    MAX_TAG_VALUE,
    PARENT_RUN_ENV,
    SWEPT_KEYS_ENV,
    connect,
    resolve_tracking_uri,
    source_tags,
)

log = logging.getLogger(__name__)

FAILED_JOBS = 0  # read by src/train.py to exit non-zero when a job failed
COLUMNS = ["job", "overrides", "loss", "impl", "status", "val_acc_best", "test_acc", "test_ece", "test_nll",
           "epoch_s", "run_id", "failure_reason"]
SHOWN = COLUMNS[:10]  # the markdown table and the printout


def sweep_overrides(config: DictConfig) -> dict[str, str]:
    """What the sweep varies, key -> its values as typed: `key=a,b`, `key=range(...)`/`choice(...)`, and a
    sweeper's own search space (Optuna's params)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    swept = {o.key_or_group.lstrip("+~"): o.input_line.split("=", 1)[1] for o in parsed if o.is_sweep_override()}
    swept.update({k: str(v) for k, v in (config.hydra.sweeper.get("params") or {}).items()})
    return swept


def _job_dirs(sweep_dir: Path) -> dict[int, Path]:
    """The job dirs Hydra made under the sweep dir (each holds .hydra/), by job number."""
    dirs = {}
    for d in sweep_dir.iterdir() if sweep_dir.is_dir() else []:
        if (d / ".hydra").is_dir() and d.name.isdigit():
            dirs[int(d.name)] = d
    return dirs


def outcome_rows(sweep_dir: Path, known_jobs: set[int]) -> list[dict]:
    """Rows for jobs MLflow does not know (refused before their run existed, or not tracked), from their
    job_outcome.json; a job dir without one is a job that never reported (killed): LOST."""
    rows = []
    for job, d in sorted(_job_dirs(sweep_dir).items()):
        if job in known_jobs:
            continue
        path = d / OUTCOME_FILE
        lost = {"status": "LOST", "reason": "the job reported no outcome (killed?)", "overrides": "", "metrics": {}}
        o = json.loads(path.read_text()) if path.exists() else lost
        m = o.get("metrics", {})
        rows.append({"job": job, "overrides": o.get("overrides", ""), "loss": o.get("loss", "?"),
                     "impl": o.get("impl", "?"),
                     "status": o["status"], "val_acc_best": m.get("val/acc_best"), "test_acc": m.get("test/acc"),
                     "test_ece": m.get("test/ece"), "test_nll": m.get("test/nll"), "epoch_s": None, "run_id": "",
                     "failure_reason": o.get("reason", "")[:200]})
    return rows


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
            "test_acc": m.get("test/acc"), "test_ece": m.get("test/ece"), "test_nll": m.get("test/nll"),
            "epoch_s": statistics.median(epochs) if epochs else None, "run_id": r.info.run_id,
            "failure_reason": t.get("failure_reason", "")[:200],
        })
    return sorted(rows, key=lambda r: r["job"])


def best_row(rows: list[dict]) -> dict | None:
    """The finished job with the best val/acc_best (the sweep's objective); test accuracy breaks ties."""
    done = [r for r in rows if r["status"] == "FINISHED" and r["val_acc_best"] is not None]
    return max(done, key=lambda r: (r["val_acc_best"], r["test_acc"] or 0)) if done else None


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict], columns=SHOWN) -> str:
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


def parent_description(rows: list[dict], best: dict | None, failed: int) -> str:
    head = f"**Sweep of {len(rows)} jobs, {failed} not finished.**"
    if best is not None:
        head += (f" Best: job {best['job']} `{best['overrides']}` with val/acc_best {best['val_acc_best']:.4f} and "
                 f"test/acc {best['test_acc']:.4f}.")
    return head + "\n\n" + markdown_table(rows)


class MlflowSweepCallback(Callback):
    """conf/hydra/default.yaml installs it; in a single run it does nothing."""

    def __init__(self):
        self.client = self.experiment_id = self.parent_run_id = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global FAILED_JOBS
        FAILED_JOBS = 0
        HydraConfig.instance().set_config(config)  # so ${hydra:...} resolves here
        swept = sweep_overrides(config)
        os.environ[SWEPT_KEYS_ENV] = ",".join(swept)
        if not str(config.logger.get("_target_", "")).endswith("MlflowTracker"):
            return
        uri = resolve_tracking_uri(config.logger.get("tracking_uri"))
        self.client, self.experiment_id = connect(uri, config.logger.experiment_name)
        task = list(config.hydra.overrides.task)
        tags = {"sweep_dir": str(config.hydra.sweep.dir), "overrides": " ".join(task) or "(defaults)",
                "sweeper": config.hydra.sweeper.get("_target_", ""),
                "launcher": config.hydra.launcher.get("_target_", ""), **source_tags("src/train.py -m")}
        with protected():
            run = self.client.create_run(self.experiment_id, run_name="sweep: " + (" ".join(task) or "(defaults)"),
                                         tags=tags)
            self.parent_run_id = run.info.run_id
            for key, values in swept.items():  # what the sweep varies, as the compare view shows params
                self.client.log_param(self.parent_run_id, key, values[:6000])
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        log.info("sweep recorded as MLflow parent run %s", self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global FAILED_JOBS
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(SWEPT_KEYS_ENV, None)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = summary_rows(self.client, self.experiment_id, self.parent_run_id) if self.parent_run_id else []
        rows = sorted(rows + outcome_rows(sweep_dir, {r["job"] for r in rows}), key=lambda r: r["job"])
        FAILED_JOBS = sum(r["status"] != "FINISHED" for r in rows)
        best = best_row(rows)
        files = write_summary(rows, sweep_dir)
        print(f"\nSweep summary ({len(rows)} jobs, {FAILED_JOBS} not finished; files in {sweep_dir}):\n"
              + markdown_table(rows), flush=True)
        if self.parent_run_id is None:
            return
        try:
            self._record_result(rows, best, files + [p for p in [sweep_dir / "optimization_results.yaml"]
                                                       if p.exists()])  # Optuna's best params
            with protected():  # the sweep ran to its end; its failed jobs are in its tags and description
                self.client.set_terminated(self.parent_run_id, "FINISHED")
        except BaseException:
            self.client.set_terminated(self.parent_run_id, "FAILED")
            raise

    def _record_result(self, rows: list[dict], best: dict | None, files: list[Path]) -> None:
        """The parent tells the sweep's result: the best job's metrics and name, the table as its description."""
        from mlflow.entities import Metric

        pid = self.parent_run_id
        with protected():
            for p in files:
                self.client.log_artifact(pid, str(p), "summary")
            tags = {"jobs": len(rows), "failed_jobs": FAILED_JOBS,
                    "mlflow.note.content": parent_description(rows, best, FAILED_JOBS)[:MAX_TAG_VALUE]}
            if best is not None:
                tags.update(best_job=best["job"], best_run_id=best["run_id"], best_overrides=best["overrides"])
                values = {"val/acc_best": best["val_acc_best"], "test/acc": best["test_acc"],
                          "test/ece": best["test_ece"], "test/nll": best["test_nll"]}
                now = int(time.time() * 1000)
                self.client.log_batch(pid, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()
                                                    if v is not None])
            for k, v in tags.items():
                self.client.set_tag(pid, k, str(v))
