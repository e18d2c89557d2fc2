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
job did not finish. A signal at any moment of the sweep, on any launcher, ends it as a unit (stop): the parent
KILLED first, the jobs given a moment to record themselves KILLED (then the signal passed on to the launcher's
processes, and a job still RUNNING after that ended KILLED by the sweep), the summary of the jobs that ran written.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from softmax_lab.config import TRIAL_KEY
from softmax_lab.errors import ConfigError, RunInterrupted, UserError
from softmax_lab.signals import protected, raise_on_signals
from softmax_lab.tracking.run_fields import MAX_PARAM_VALUE, MAX_TAG_VALUE, readable, source_tags
from softmax_lab.tracking.store import connect
from softmax_lab.tracking.sweep_jobs import SweepLink, end_stopped_jobs
from softmax_lab.tracking.sweep_summary import (
    best_row,
    markdown_table,
    outcome_rows,
    parent_description,
    ranked,
    summary_rows,
    write_summary,
)
from softmax_lab.tracking.uris import browse_hint, resolve_tracking_uri, sweep_view

log = logging.getLogger(__name__)
SEARCH_FILES = ("search.md", "search.png", "optimization_results.yaml")  # an Optuna search's report, when there is one

# The sweep this process runs (Hydra makes its callback): src/train.py stops it on a signal and exits non-zero when a
# job failed (failed_jobs); a search whose study went away ends its parent run
ACTIVE: MlflowSweepCallback | None = None


def sweep_overrides(config: DictConfig) -> tuple[dict[str, str], dict[str, str]]:
    """What the sweep varies, key -> its values as typed (`key=a,b`, `key=range(...)`/`choice(...)`), and the keys the
    command line fixes that the sweeper would have varied. A sweeper that plans its own jobs (an Optuna search) says
    both itself, through its class's `varied(config)`, checked: ConfigError when it cannot run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import get_class

    try:
        varied = getattr(get_class(config.hydra.sweeper._target_), "varied", None)
    except (ImportError, ValueError):  # a sweeper that is not installed: Hydra says so when it instantiates it
        varied = None
    if varied is not None:
        return varied(config)
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return {o.key_or_group.lstrip("+~"): o.input_line.split("=", 1)[1] for o in parsed if o.is_sweep_override()}, {}


def refuse(e: UserError) -> NoReturn:
    """One line for a mistake found outside any job (Hydra would print its traceback), exit code 1."""
    logging.getLogger("softmax_lab").error("error: %s", e)
    sys.exit(1)


def end_parent_run(status: str, reason: str) -> None:
    """End the running sweep's parent run early (a search whose study went away): `status`, the reason as a tag."""
    if ACTIVE is not None and ACTIVE.parent_run_id is not None:
        with protected():
            ACTIVE.client.set_tag(ACTIVE.parent_run_id, "failure_reason", reason)
            ACTIVE.client.set_tag(ACTIVE.parent_run_id, "state", status.lower())
            ACTIVE.client.set_terminated(ACTIVE.parent_run_id, status)
        ACTIVE.ended = True


def stopped(e: BaseException) -> None:
    """What src/train.py does with a signal that ended the command (a job's exit code 130/143 or a signal between
    jobs): a sweep under way ends as a unit (MlflowSweepCallback.stop), then the command exits with the signal's
    code; before any sweep started, one line. Anything else goes on up, a sweep under way ended FAILED first."""
    code = e.exit_code if isinstance(e, RunInterrupted) else 130 if isinstance(e, KeyboardInterrupt) else \
        e.code if isinstance(e, SystemExit) else None
    if code not in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        if ACTIVE is not None and not ACTIVE.ended:  # it broke off (Hydra could not compose a job): never left RUNNING
            end_parent_run("FAILED", "the sweep broke off with an error before its end (the output says which)")
        return
    name = signal.Signals(code - 128).name
    if ACTIVE is None or ACTIVE.ended:
        if ACTIVE is None and not isinstance(e, SystemExit):  # (a job that exits says its own line)
            logging.getLogger("softmax_lab").error("interrupted by %s before any run started; nothing was recorded",
                                                   name)
        sys.exit(code)
    ACTIVE.stop(code - 128)
    logging.getLogger("softmax_lab").error("sweep stopped by %s: %s; its summary is in %s", name,
                                           "its MLflow parent run is KILLED" if ACTIVE.parent_run_id else
                                           "nothing more was launched", ACTIVE.sweep_dir)
    sys.exit(code)


def check_sweep_dir(sweep_dir: Path) -> None:
    """The sweep dir can be made and written: ConfigError before the parent run exists (Hydra's own attempt would
    be a traceback, with the parent left RUNNING)."""
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        probe = sweep_dir / ".softmax-lab-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} cannot be written ({e.strerror or e}). Fix: "
                          "hydra.sweep.dir=<a folder you can write>.") from e


class MlflowSweepCallback(Callback):
    """conf/hydra/default.yaml installs it; in a single run it does nothing."""

    def __init__(self):
        self.client = self.experiment_id = self.parent_run_id = self.uri = self.sweep_dir = self.started = None
        self.ended = False  # the parent's status is final
        self.failed_jobs = 0  # jobs that did not finish (the command's exit code)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        global ACTIVE
        ACTIVE = self
        HydraConfig.instance().set_config(config)  # so ${hydra:...} resolves here
        self.sweep_dir, self.started = Path(str(config.hydra.sweep.dir)), time.time()
        try:  # a sweep that cannot run is refused in one line, before its parent run exists
            check_sweep_dir(self.sweep_dir)
            swept, fixed = sweep_overrides(config)
        except UserError as e:
            refuse(e)
        searched = TRIAL_KEY in swept
        SweepLink(swept_keys=tuple(swept)).tell_jobs()
        raise_on_signals()  # from here a signal, between jobs or in one, ends the sweep as a unit (stop)
        if not str(config.logger.get("_target_", "")).endswith("MlflowTracker"):
            return
        self.uri = resolve_tracking_uri(config.logger.get("tracking_uri"))
        self.client, self.experiment_id = connect(self.uri, config.logger.experiment_name)
        task = list(config.hydra.overrides.task)
        kind = "search" if searched else "sweep"
        what = f"search {config.hydra.sweeper.study_name}" if searched else \
            " ".join(f"{k}={v}" for k, v in swept.items()) or "(defaults)"
        label = f"{what} ({time.strftime('%m-%d %H:%M')})"  # the runs table's sweep column, on the parent and its jobs
        tags = {"sweep_dir": str(self.sweep_dir), "overrides": " ".join(task) or "(defaults)", "kind": kind,
                "sweep": label, "state": "running", "sweeper": config.hydra.sweeper.get("_target_", ""),
                "launcher": config.hydra.launcher.get("_target_", ""), **source_tags("src/train.py -m")}
        with protected():
            run = self.client.create_run(self.experiment_id, run_name=f"{kind}: " + (" ".join(task) or "(defaults)"),
                                         tags=tags)
            self.parent_run_id = run.info.run_id
            for key, values in {**swept, **fixed}.items():  # what the sweep varies, as the compare view shows params
                self.client.log_param(self.parent_run_id, key, values[:MAX_PARAM_VALUE])
            self.client.set_experiment_tag(self.experiment_id, *sweep_view(
                self.parent_run_id, [k for k in swept if k != TRIAL_KEY]))
        SweepLink(self.parent_run_id, label, tuple(swept)).tell_jobs()
        log.info("sweep recorded as MLflow parent run %s", self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self._conclude("FINISHED")

    def stop(self, signum: int) -> None:
        """The sweep was stopped by `signum`: the parent KILLED (first: it tells the truth whatever follows), the
        jobs in other processes given time to record themselves, the summary of the jobs that ran."""
        reason = f"the sweep was stopped by {signal.Signals(signum).name}"
        if self.parent_run_id is not None:
            with protected():
                self.client.set_terminated(self.parent_run_id, "KILLED")
                self.client.set_tag(self.parent_run_id, "state", "killed")
                self.client.set_tag(self.parent_run_id, "failure_reason", reason)
            end_stopped_jobs(self.client, self.experiment_id, self.parent_run_id, signum, reason)
        self._conclude("KILLED", reason)

    def _conclude(self, status: str, reason: str | None = None) -> None:
        """The summary of every job (into the sweep dir and onto the parent), then the parent's final status."""
        SweepLink.forget()
        sweep_dir = self.sweep_dir
        try:
            rows = summary_rows(self.client, self.experiment_id, self.parent_run_id) if self.parent_run_id else []
            rows += outcome_rows(sweep_dir, {r["job"] for r in rows}, self.started)
            rows.sort(key=lambda r: r["job"])
            self.failed_jobs = sum(r["status"] not in ("FINISHED", "PRUNED") for r in rows)
            files = write_summary(rows, sweep_dir)
            said = f"{len(rows)} jobs, {self.failed_jobs} not finished" + (f"; {reason}" if reason else "")
            print(f"\nSweep summary ({said}; files in {sweep_dir}):\n" + markdown_table(rows), flush=True)
            if self.parent_run_id is not None:
                search = [p for p in (sweep_dir / n for n in SEARCH_FILES) if p.exists()]  # search/report.py
                record_result(self.client, self.experiment_id, self.parent_run_id, rows, files + search, reason,
                              self.failed_jobs)
                with protected():
                    self.client.set_tag(self.parent_run_id, "state", status.lower())
                    self.client.set_terminated(self.parent_run_id, status)
                print(browse_hint(self.uri, self.experiment_id, self.parent_run_id, sweep=True), flush=True)
            self.ended = True
        except Exception:
            self.failed_jobs = max(self.failed_jobs, 1)
            if self.parent_run_id is not None and status == "FINISHED":
                with protected():
                    self.client.set_tag(self.parent_run_id, "state", "failed")
                    self.client.set_terminated(self.parent_run_id, "FAILED")
            self.ended = True
            raise


def record_result(client, experiment_id: str, pid: str, rows: list[dict], files: list[Path],
                  stopped: str | None, failed_jobs: int) -> None:
    """The parent `pid` tells the sweep's result: the best job (tags, winner/* metrics, a link), the table as its
    description; each job's place in the answer (sweep_rank, the order of the sweep's view)."""
    from mlflow.entities import Metric

    best = best_row(rows)
    with protected():
        for p in files:
            client.log_artifact(pid, str(p), "summary")
        report = next((p.read_text() + "\n" for p in files if p.name == "search.md"), "")
        tags = {"jobs": len(rows), "failed_jobs": failed_jobs,
                "mlflow.note.content": (report + parent_description(rows, best, failed_jobs,
                                                                    experiment_id, stopped))[:MAX_TAG_VALUE]}
        if best is not None:
            tags.update(best_job=best["job"], best_run_id=best["run_id"], best_overrides=best["overrides"],
                        best_test_acc=f"{best['test_acc']:.4f}", best_val_acc_best=f"{best['val_acc_best']:.4f}")
            # the winner's result under the parent's own keys (their section sorts last): as test/acc etc. the
            # parent would be one more bar in every chart comparing the jobs
            values = {"winner/val_acc_best": best["val_acc_best"], "winner/test_acc": best["test_acc"],
                      "winner/test_ece": best["test_ece"], "winner/test_nll": best["test_nll"]}
            now = int(time.time() * 1000)
            client.log_batch(pid, metrics=[Metric(k, readable(v), now, 0) for k, v in values.items() if v is not None])
        for k, v in tags.items():
            client.set_tag(pid, k, str(v))
        for rank, r in enumerate(ranked([r for r in rows if r["run_id"]]), 1):  # the order of the sweep's view
            client.set_tag(r["run_id"], "sweep_rank", f"{rank:03d}")
