"""The MLflow run: created (or an interrupted one reopened) by the tracker, which hands Lightning a logger attached
to it and, not Lightning, sets its final status: FINISHED, FAILED (the reason as the `failure_reason` tag and the
description) or KILLED. Every write is a `store_write` (store.py): never cut in two by a signal."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable
from pathlib import Path

from pytorch_lightning.utilities.exceptions import SIGTERMException

from softmax_lab.console import redact
from softmax_lab.errors import DivergenceError, RunInterrupted, TrackingError, UserError
from softmax_lab.signals import protected
from softmax_lab.tracking.logger import BufferedMlflowLogger, FlushMetrics
from softmax_lab.tracking.run_fields import MAX_TAG_VALUE
from softmax_lab.tracking.run_model import RunModel
from softmax_lab.tracking.store import GONE, connect, first_line, store_errors, store_write
from softmax_lab.tracking.sweep_jobs import SweepLink
from softmax_lab.tracking.uris import browse_hint, resolve_tracking_uri

log = logging.getLogger(__name__)


def no_answer(uri: str, run_id: str, e: BaseException) -> TrackingError:
    return TrackingError(f"the MLflow store {redact(uri)} could not say whether it holds run {run_id}, the run to "
                         f"resume ({first_line(e)[:200]}); nothing was changed. Fix: run the same command again once "
                         "the store answers.")


class MlflowTracker(RunModel):
    """One MLflow run per training or evaluation job (conf/logger/mlflow.yaml); its model: RunModel."""

    enabled = True

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = "fashion-mnist-softmax",
                 run_name: str | None = None, registered_model_name: str | None = None):
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment_name, self.run_name = experiment_name, run_name
        self.registered_model_name = registered_model_name
        self.client = self.experiment_id = self.run_id = self.logger = None
        self.logged_until: dict[str, int] = {}  # a reopened run: the last step of each metric it holds

    def connect(self) -> None:
        self.client, self.experiment_id = connect(self.uri, self.experiment_name)

    def find_run(self, run_id: str | None):
        """The run with this id in this store's experiment; None when the store does not hold it. A store that
        cannot answer is a TrackingError: a resume must not start a second run because of a passing failure."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise no_answer(self.uri, run_id, e) from e
        except store_errors() as e:
            raise no_answer(self.uri, run_id, e) from e
        return run if run.info.experiment_id == self.experiment_id else None

    def start_run(self, run_name: str, tags: dict[str, str], resume_run_id: str | None = None) -> str:
        """Create the run, or reopen `resume_run_id` (an interrupted run of this store) as RUNNING again."""
        link = SweepLink.of_this_job()
        sweep = {"mlflow.parentRunId": link.parent_run_id, "sweep": link.label}
        tags = {"state": "running", **tags, **{k: v for k, v in sweep.items() if v}, "mlflow.runName": self.run_name or
                run_name}
        tags = {k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()}
        resumed = self.find_run(resume_run_id)
        with store_write(self.uri):
            if resumed is not None:
                self.logged_until = {k: max(m.step for m in self.client.get_metric_history(resume_run_id, k))
                                     for k in resumed.data.metrics}
                for k, v in tags.items():
                    if k != "mlflow.runName":
                        self.client.set_tag(resume_run_id, k, v)
                self.client.update_run(resume_run_id, status="RUNNING")
                self.run_id = resume_run_id
            else:
                self.run_id = self.client.create_run(self.experiment_id, run_name=tags["mlflow.runName"],
                                                     tags=tags).info.run_id
        return self.run_id

    def log_params(self, params: dict[str, str]) -> None:
        """The run's params; a reopened run (MLflow params cannot change) tags what its resume changed."""
        from mlflow.entities import Param

        with store_write(self.uri):
            existing = self.client.get_run(self.run_id).data.params
            changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
            new = [Param(k, v) for k, v in params.items() if k not in existing]
            for i in range(0, len(new), 100):
                self.client.log_batch(self.run_id, params=new[i : i + 100])
            if changed:
                self.client.set_tag(self.run_id, "resumed_with", " ".join(f"{k}={v}" for k, v in changed.items()))

    def lightning_logger(self, spool: Path | None = None) -> BufferedMlflowLogger:
        """Lightning's logger for this run; `spool`: the file for what a store that goes away does not take."""
        self.logger = BufferedMlflowLogger(experiment_name=self.experiment_name, tracking_uri=self.uri,
                                           run_id=self.run_id, logged_until=self.logged_until, spool=spool)
        return self.logger

    def callbacks(self) -> list:
        return [FlushMetrics(self.logger)] if self.logger is not None else []

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        with store_write(self.uri):
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        with store_write(self.uri):
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v)[:MAX_TAG_VALUE])

    def set_description(self, markdown: str) -> None:
        self.set_tags({"mlflow.note.content": markdown})

    def finish(self, status: str, reason: str | None = None, description: str | None = None,
               state: str | None = None) -> None:
        """Record what happened: the status first, so it tells the truth whatever fails after it; then the state
        tag (pruned, diverged: what the status cannot say), what was logged but not written, reason, description."""
        if self.run_id is None:
            return
        if self.uri in GONE:  # no write would arrive: the metrics go to the run dir, the status waits for a resume
            return self.logger.flush() if self.logger is not None else None
        tags = {"state": state or status.lower(), "failure_reason": reason, "mlflow.note.content": description}
        errors, writes = [], [lambda: self.client.set_terminated(self.run_id, status),
                              lambda: self.set_tags({k: v for k, v in tags.items() if v})]
        if self.logger is not None:
            writes.insert(1, self.logger.flush)
        if self.model_pending():  # the run ended before its model was saved
            writes.append(self.fail_model)
        for i, write in enumerate(writes):
            try:
                with protected():
                    write()
            except (TrackingError, *store_errors()) as e:  # a full disk, a store gone: the others are still tried
                errors.append((i, e))
        if errors:  # the first write is the status: say whether it holds
            said = f"is {status}, but not everything" if errors[0][0] else f"could not be marked {status}: nothing"
            log.warning("MLflow run %s %s could be written to %s: %s", self.run_id, said, redact(self.uri),
                        first_line(errors[0][1]))

    def describe(self) -> str:
        return f"MLflow run {self.run_id} in {redact(self.uri)} (experiment {self.experiment_name})"

    def browse_hint(self) -> str:
        return browse_hint(self.uri, self.experiment_id, self.run_id)


class NoTracking:
    """logger=none: the same interface, recording nothing."""

    enabled = False
    run_id = uri = model_uri = None

    def connect(self) -> None: ...

    def find_run(self, run_id):
        return None

    def start_run(self, run_name, tags, resume_run_id=None) -> None: ...

    def log_params(self, params) -> None: ...

    def log_datasets(self, datamodule, splits=()) -> None: ...

    def lightning_logger(self, spool=None):
        return False

    def callbacks(self) -> list:
        return []

    def log_artifact(self, path, artifact_path=None) -> None: ...

    def start_model(self, run_name, params) -> None: ...

    def log_model(self, classifier, example, step, metrics) -> None: ...

    def set_tags(self, tags) -> None: ...

    def set_description(self, markdown: str) -> None: ...

    def finish(self, status, reason=None, description=None, state=None) -> None: ...

    def describe(self) -> str:
        return "not tracked (logger=none)"

    def browse_hint(self) -> str:
        return ""


def _outcome_description(status: str, reason: str | None, resume_hint: Callable[[], str | None] | None) -> str | None:
    if status == "KILLED":
        hint = resume_hint() if resume_hint is not None else None
        if hint is None:
            return f"**KILLED** ({reason}). What it measured until then is kept."
        return f"**KILLED** ({reason}) {hint}"
    if status == "FAILED":
        return f"**FAILED**: {reason}"
    return None


@contextlib.contextmanager
def recorded_run(tracker, name: str, tags: dict[str, str], resume_run_id: str | None = None,
                 resume_hint: Callable[[], str | None] | None = None):
    """Start (or reopen) the run; on the way out its status tells the truth: FINISHED, FAILED (the reason as
    the `failure_reason` tag and the description) or KILLED, described by `resume_hint()` (how far it got and
    how to go on). Whatever was logged before is written."""
    tracker.start_run(name, tags, resume_run_id)
    status, reason, state = "FAILED", None, None
    try:
        yield
        status, state = "FINISHED", getattr(tracker, "state", None)  # "pruned": ended early on purpose
    except BaseException as e:
        if isinstance(e, RunInterrupted | KeyboardInterrupt | SIGTERMException):
            status, reason = "KILLED", str(e) if isinstance(e, RunInterrupted) else f"interrupted ({type(e).__name__})"
        elif isinstance(e, UserError):
            reason, state = str(e), "diverged" if isinstance(e, DivergenceError) else None
        else:
            reason = "".join(traceback.format_exception_only(type(e), e)).strip()
        e.recorded = tracker.run_id is not None  # so the command line says truthfully whether a run holds it
        raise
    finally:
        tracker.finish(status, reason, _outcome_description(status, reason, resume_hint), state)
