"""A Hydra multirun as one MLflow parent run that tells the sweep's result, with a summary of every job.

on_multirun_start creates the store, the experiment and the parent run once, before any job starts
(parallel jobs creating a fresh sqlite store race on its schema), records what the sweep varies as
the parent's params, and exports the parent's id: every job's run carries it as `mlflow.parentRunId`.
on_multirun_end reads the children back from MLflow, whatever launcher ran them and however they
ended, adds the jobs that never got a run from their job_outcome.json, and writes the summary
(sweep_summary.py) into the sweep dir and onto the parent, whose tags and description then give the best job
(tags, and its result as winner/* metrics: under test/* it would be one more bar in the jobs' compare charts).
The parent ends FINISHED when the summary is written
(its failed jobs are in its tags and description), FAILED when writing it fails; the sweep exits non-zero when any
job did not finish.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from softmax_lab.errors import UserError
from softmax_lab.signals import protected
from softmax_lab.tracking.run_fields import MAX_PARAM_VALUE, MAX_TAG_VALUE, readable, source_tags
from softmax_lab.tracking.store import connect
from softmax_lab.tracking.sweep_jobs import PARENT_RUN_ENV, SWEPT_KEYS_ENV
from softmax_lab.tracking.sweep_summary import (
    best_row,
    markdown_table,
    outcome_rows,
    parent_description,
    summary_rows,
    write_summary,
)
from softmax_lab.tracking.uris import resolve_tracking_uri

log = logging.getLogger(__name__)
SEARCH_FILES = ("search.md", "search.png", "optimization_results.yaml")  # an Optuna search's report, when there is one

FAILED_JOBS = 0  # read by src/train.py to exit non-zero when a job failed
ACTIVE: MlflowSweepCallback | None = None  # the running sweep's callback: a stopped search ends its parent run
SEARCH_SWEEPER = "hydra_plugins.softmax_lab_optuna.OptunaSweeper"


def is_search(config: DictConfig) -> bool:
    return config.hydra.sweeper.get("_target_") == SEARCH_SWEEPER


def sweep_overrides(config: DictConfig, space=None) -> tuple[dict[str, str], dict[str, str]]:
    """What the sweep varies, key -> its values as typed (`key=a,b`, `key=range(...)`/`choice(...)`; for an Optuna
    search, `space`: the space it really searches), and the keys a search's space names that the command line fixes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if space is not None:
        from softmax_lab.search.loop import TRIAL_KEY

        fixed = {k: f"{v} (fixed by the command line; the space said {was})" for k, (v, was) in space.fixed.items()}
        return {TRIAL_KEY: "the Optuna trial's number", **space.described}, fixed
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return {o.key_or_group.lstrip("+~"): o.input_line.split("=", 1)[1] for o in parsed if o.is_sweep_override()}, {}


def refuse(e: UserError) -> NoReturn:
    """One line for a mistake found outside any job (Hydra would print its traceback), exit code 1."""
    logging.getLogger("softmax_lab").error("error: %s", e)
    sys.exit(1)


def end_parent_run(status: str, reason: str) -> None:
    """End the running sweep's parent run early (a search stopped by a signal): `status`, the reason as a tag."""
    if ACTIVE is not None and ACTIVE.parent_run_id is not None:
        with protected():
            ACTIVE.client.set_tag(ACTIVE.parent_run_id, "failure_reason", reason)
            ACTIVE.client.set_terminated(ACTIVE.parent_run_id, status)


class MlflowSweepCallback(Callback):
    """conf/hydra/default.yaml installs it; in a single run it does nothing."""

    def __init__(self):
        self.client = self.experiment_id = self.parent_run_id = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global FAILED_JOBS, ACTIVE
        FAILED_JOBS, ACTIVE = 0, self
        HydraConfig.instance().set_config(config)  # so ${hydra:...} resolves here
        space = None
        if is_search(config):  # a search that cannot run is refused in one line, before its parent run exists
            from softmax_lab.search.loop import plan

            try:
                space, _ = plan(config.hydra.sweeper, list(config.hydra.overrides.task))
            except UserError as e:
                refuse(e)
        swept, fixed = sweep_overrides(config, space)
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
            for key, values in {**swept, **fixed}.items():  # what the sweep varies, as the compare view shows params
                self.client.log_param(self.parent_run_id, key, values[:MAX_PARAM_VALUE])
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        log.info("sweep recorded as MLflow parent run %s", self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        global FAILED_JOBS
        os.environ.pop(PARENT_RUN_ENV, None)
        os.environ.pop(SWEPT_KEYS_ENV, None)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            rows = summary_rows(self.client, self.experiment_id, self.parent_run_id) if self.parent_run_id else []
            rows = sorted(rows + outcome_rows(sweep_dir, {r["job"] for r in rows}), key=lambda r: r["job"])
            FAILED_JOBS = sum(r["status"] not in ("FINISHED", "PRUNED") for r in rows)
            files = write_summary(rows, sweep_dir)
            print(f"\nSweep summary ({len(rows)} jobs, {FAILED_JOBS} not finished; files in {sweep_dir}):\n"
                  + markdown_table(rows), flush=True)
            if self.parent_run_id is not None:
                search = [p for p in (sweep_dir / n for n in SEARCH_FILES) if p.exists()]  # search/report.py
                self._record_result(rows, best_row(rows), files + search)
                with protected():
                    self.client.set_terminated(self.parent_run_id, "FINISHED")
        except BaseException:
            FAILED_JOBS = max(FAILED_JOBS, 1)
            if self.parent_run_id is not None:
                with protected():
                    self.client.set_terminated(self.parent_run_id, "FAILED")
            raise

    def _record_result(self, rows: list[dict], best: dict | None, files: list[Path]) -> None:
        """The parent tells the sweep's result: the best job (tags, winner/* metrics, a link), the table as its
        description."""
        from mlflow.entities import Metric

        pid = self.parent_run_id
        with protected():
            for p in files:
                self.client.log_artifact(pid, str(p), "summary")
            report = next((p.read_text() + "\n" for p in files if p.name == "search.md"), "")
            tags = {"jobs": len(rows), "failed_jobs": FAILED_JOBS,
                    "mlflow.note.content": (report + parent_description(rows, best, FAILED_JOBS,
                                                                        self.experiment_id))[:MAX_TAG_VALUE]}
            if best is not None:
                tags.update(best_job=best["job"], best_run_id=best["run_id"], best_overrides=best["overrides"],
                            best_test_acc=f"{best['test_acc']:.4f}", best_val_acc_best=f"{best['val_acc_best']:.4f}")
                # the winner's result under the parent's own keys (their section sorts last): as test/acc etc. the
                # parent would be one more bar in every chart comparing the jobs
                values = {"winner/val_acc_best": best["val_acc_best"], "winner/test_acc": best["test_acc"],
                          "winner/test_ece": best["test_ece"], "winner/test_nll": best["test_nll"]}
                now = int(time.time() * 1000)
                self.client.log_batch(pid, metrics=[Metric(k, readable(v), now, 0) for k, v in values.items()
                                                    if v is not None])
            for k, v in tags.items():
                self.client.set_tag(pid, k, str(v))
