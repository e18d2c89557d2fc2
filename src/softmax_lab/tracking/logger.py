"""Lightning's MLflow logger, buffered: metrics go to the store in one batch per flush, at epoch ends and before
every checkpoint (FlushMetrics), so the store stays off the training clock and a resume finds everything its
checkpoint's run had logged."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from softmax_lab.errors import StoreGone
from softmax_lab.files import write_text
from softmax_lab.tracking.run_fields import readable
from softmax_lab.tracking.store import GONE, store_write

UNSENT = "mlflow_unsent.json"  # in the run dir: metrics a store that went away did not take, sent at resume


def read_spool(path: Path) -> list:
    from mlflow.entities import Metric

    return [Metric(**m) for m in json.loads(path.read_text())]


class BufferedMlflowLogger(MLFlowLogger):
    """MLFlowLogger that writes metrics in one batch per flush instead of one request per log call.

    A synchronous write to sqlite costs ~25 ms; the module logs a few times per epoch, so buffering
    and flushing at epoch ends (FlushMetrics) keeps the store off the training clock. The config is
    logged once by the tracker, so Lightning's hyperparameter logging is a no-op here. A resumed run
    skips the (key, step) points its interrupted part already logged: history continues, never twice.
    """

    def __init__(self, logged_until: dict[str, int] | None = None, spool: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.store_uri = kwargs["tracking_uri"]
        self._buffer = []
        self._logged_until = dict(logged_until or {})
        self.spool, self._kept = spool, []  # the metrics a store that went away did not take (UNSENT in the run dir)
        if spool is not None and spool.exists():  # a resumed run sends them first; its retraining does not repeat them
            self._buffer = read_spool(spool)
            for m in self._buffer:
                self._logged_until[m.key] = max(m.step, self._logged_until.get(m.key, -1))
        self._trained = False  # whether this process logged anything past the resumed run's steps
        # a non-finite value (a diverged loss) as a tag `nonfinite/<key>`: "inf at step 12"; as a metric point MLflow
        # would show it as 1.7976931348623157e+308
        self._nonfinite: dict[str, str] = {}
        self.model_id: str | None = None  # set before the test pass: test/* metrics are linked to the run's model
        self.test_dataset: tuple[str, str] | None = None  # and to the test split's dataset input (name, digest)

    def log_hyperparams(self, params) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Buffered: written in batches by flush(); a step logged before a resume is skipped, not logged twice."""
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), step or 0
        for k, v in metrics.items():
            if isinstance(v, str) or step <= self._logged_until.get(k, -1) and (step > 0 or not self._trained):
                continue  # logged before the resume; a step-0 result (test/*) again only if training went on
            self._trained = self._trained or step > 0
            at = step if step or self._logged_until.get(k, 0) <= 0 else self._logged_until[k]
            # ^ a result an earlier version logged at a later step (its last): logged again at that step, later in time,
            # so the runs table shows the new value, as the description does
            if not math.isfinite(v):
                self._nonfinite[k] = f"{float(v)} at step {at}"
                continue
            link = {}
            if k.startswith("test/") and self.model_id:
                name, digest = self.test_dataset or (None, None)
                link = {"model_id": self.model_id, "dataset_name": name, "dataset_digest": digest}
            self._buffer.append(Metric(key=k, value=readable(v), timestamp=now, step=at, **link))

    def flush(self) -> None:
        """Write the buffer; when the store stopped answering, keep it in the spool file instead (and say so by
        StoreGone the first time)."""
        if self.store_uri in GONE:
            self._keep()
            return
        try:
            while self._buffer:
                batch = self._buffer[:1000]
                with store_write(self.store_uri):
                    self.experiment.log_batch(self.run_id, metrics=batch)
                self._buffer = self._buffer[1000:]
            if self._nonfinite:
                from mlflow.entities import RunTag

                with store_write(self.store_uri):
                    self.experiment.log_batch(self.run_id, tags=[RunTag(f"nonfinite/{k}", v)
                                                                 for k, v in self._nonfinite.items()])
                self._nonfinite = {}
        except StoreGone:
            self._keep()
            raise
        if self.spool is not None and not self._kept and self.spool.exists():
            self.spool.unlink()  # its metrics are in the store now

    def _keep(self) -> None:
        if self.spool is None or not self._buffer:
            return
        self._kept += self._buffer
        self._buffer = []
        write_text(self.spool, json.dumps([{k: v for k, v in m.to_dictionary().items() if v is not None}
                                           for m in self._kept]))

    def finalize(self, status: str = "success") -> None:
        self.flush()  # the status is the tracker's to set


class FlushMetrics(pl.Callback):
    """Write the buffered metrics before every checkpoint is written (so a resume, even after SIGKILL, finds
    in the store everything its checkpoint's run had logged), at each epoch's end, after testing, and when
    anything fails."""

    def __init__(self, logger: BufferedMlflowLogger):
        self.logger = logger

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.logger.flush()
        checkpoint["mlflow_run_id"] = self.logger.run_id  # a resume reopens the run; eval.py cites it

    def on_train_epoch_end(self, trainer, pl_module):
        self.logger.flush()

    def on_test_end(self, trainer, pl_module):
        self.logger.flush()

    def on_exception(self, trainer, pl_module, exception):
        if not isinstance(exception, StoreGone):  # it said so already; its metrics are kept (flush)
            self.logger.flush()
