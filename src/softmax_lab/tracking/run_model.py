"""The run's data and model, as a part of the tracker (MlflowTracker): the splits as dataset inputs; the model on the
experiment's Models page, created before the test pass so that the test metrics are logged linked to it (and to the
test split), saved after it, marked FAILED if the run ends in between."""

from __future__ import annotations

from softmax_lab.tracking.store import store_write


class RunModel:
    """Uses the tracker's uri, client, run_id, experiment_id, logger and registered_model_name."""

    model_id: str | None = None
    model_uri: str | None = None
    test_dataset: tuple[str, str] | None = None  # (name, digest) of the test split's dataset input

    def log_datasets(self, datamodule, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
        """The splits as the run's MLflow dataset inputs (name, digest, source); the test metrics link to the last."""
        from softmax_lab.tracking.datasets import dataset_inputs

        inputs = dataset_inputs(datamodule, splits)  # the test metrics are linked to the last (test)
        self.test_dataset = (inputs[-1].dataset.name, inputs[-1].dataset.digest)
        with store_write(self.uri):
            self.client.log_inputs(self.run_id, datasets=inputs)

    def start_model(self, run_name: str, params: dict[str, str]) -> None:
        """Before the test pass: the run's logged model (PENDING), to which the logger links the test metrics."""
        import mlflow

        from softmax_lab.tracking.pyfunc_model import start_model

        mlflow.set_tracking_uri(self.uri)  # MLflow's logged-model calls use the global store
        with store_write(self.uri):
            self.model_id = start_model(self.run_id, self.experiment_id, run_name, params)
        if self.logger is not None:  # the test metrics: linked to the model and to the test split's dataset
            self.logger.model_id, self.logger.test_dataset = self.model_id, self.test_dataset

    def log_model(self, classifier, example, step: int, metrics: dict[str, float]) -> str:
        """The classifier as the run's MLflow model (pyfunc, with its input example and test metrics); its URI."""
        from softmax_lab.tracking.pyfunc_model import log_model

        with store_write(self.uri):
            self.model_uri = log_model(self.client, self.run_id, self.model_id, classifier, example, step, metrics,
                                       self.registered_model_name)
        return self.model_uri

    def model_pending(self) -> bool:
        return self.model_id is not None and self.model_uri is None

    def fail_model(self) -> None:
        """A model started but never saved (the run failed or was killed in between) is marked FAILED."""
        import mlflow
        from mlflow.entities import LoggedModelStatus

        mlflow.finalize_logged_model(self.model_id, LoggedModelStatus.FAILED)
