"""A run's best model as an MLflow model (pyfunc): Fashion-MNIST pixels in, classes and probabilities out.

    model = mlflow.pyfunc.load_model("models:/<model id>")   # or runs:/..., or the registry's name
    model.predict(pixels)   # float32 (n, 784) in [0, 1]: 28x28 images flattened, light object on dark

Output: a DataFrame with `class_id`, `class_name`, `probability` (softmax of the logits, the model's own
probability; see docs/science.md on calibration) and one `p_<class name>` column per class. The model prepares
the pixels as its training run did (data.resize, data.normalize), so it takes raw images whatever the run.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.types.type_hints import TypeFromExample

from softmax_lab.maths.classifier import LinearClassifier

# MLflow's advice at every log_model that does not apply here (matched by message, everything else shows):
# pickling is how a PythonModel object is saved; an (n, 784) array is the input this model takes.
NOT_OURS = ("Passing a Python object as `python_model`", "Input example must be one of pandas.DataFrame")


class SoftmaxRegressionPyfunc(mlflow.pyfunc.PythonModel):
    """The weights, class names and data preparation of one run's LinearClassifier, as numpy arrays."""

    def __init__(self, classifier: LinearClassifier):
        self.W, self.b = classifier.W.numpy(), classifier.b.numpy()
        self.class_names, self.resize = list(classifier.class_names), classifier.resize
        self.mean, self.std = classifier.mean, classifier.std

    def classifier(self) -> LinearClassifier:
        return LinearClassifier(torch.from_numpy(self.W), torch.from_numpy(self.b), self.class_names, self.resize,
                                self.mean, self.std)

    def predict(self, context, model_input: TypeFromExample, params=None) -> pd.DataFrame:
        # TypeFromExample: MLflow takes the input's type from the input example (a float32 array)
        X = checked_pixels(np.asarray(model_input, dtype=np.float32))
        P = self.classifier().probabilities(torch.as_tensor(X)).numpy() if len(X) else np.zeros((0, len(self.b)))
        ids = P.argmax(axis=1)
        columns = {"class_id": ids, "class_name": [self.class_names[i] for i in ids], "probability": P.max(axis=1)}
        columns.update({f"p_{name.replace(' ', '_')}": P[:, i] for i, name in enumerate(self.class_names)})
        return pd.DataFrame(columns)


PIXELS = 28 * 28


def checked_pixels(X: np.ndarray) -> np.ndarray:
    """(n, 784) pixels in [0, 1], or MLflow's INVALID_PARAMETER_VALUE (a 400 from `mlflow models serve`) saying what
    is wrong in one sentence: 0..255 pixels would saturate every probability and change classes, a NaN would answer
    NaN. An empty batch is an empty answer."""
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

    def refuse(why: str):
        raise MlflowException(f"{why}. The model takes float32 rows of {PIXELS} pixels in [0, 1] (28x28 images "
                              "flattened, light object on dark).", error_code=INVALID_PARAMETER_VALUE)

    if X.ndim == 0 or (X.size and X.size % PIXELS) or (len(X) and X[0].size != PIXELS):
        refuse(f"an input of shape {X.shape} is not rows of {PIXELS} pixels")
    X = X.reshape(-1, PIXELS)
    if not np.isfinite(X).all():
        rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
        refuse(f"row {rows[0]} holds a non-finite pixel (NaN or inf; {len(rows)} such row(s))")
    if X.size and (X.min() < 0 or X.max() > 1):
        hint = ": divide 0..255 images by 255" if X.max() > 1 else ""
        refuse(f"pixels range over [{X.min():g}, {X.max():g}], outside [0, 1]{hint}")
    return X


class _NotOurs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(NOT_OURS)


@contextlib.contextmanager
def mlflow_advice_filtered():
    """MLflow's advice that does not apply here, filtered by message (the rest of its output is kept)."""
    logger, hide = logging.getLogger("mlflow.pyfunc"), _NotOurs()
    logger.addFilter(hide)
    try:
        with warnings.catch_warnings():
            # class_id is an integer column and never missing: MLflow's hint about missing integers does not apply
            warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column", UserWarning)
            yield
    finally:
        logger.removeFilter(hide)


def model_name(run_name: str, run_id: str) -> str:
    """The logged model's name: its run's, made valid (MLflow refuses / : . % and quotes in one), and the run id's
    first 8 characters, so two runs of one config stay apart on the Models page."""
    valid = "".join("_" if c in "/:.%\"'" else c for c in run_name.replace(": ", " "))  # a trial: "trial 3 loss=..."
    return f"{valid} ({run_id[:8]})"


def start_model(run_id: str, experiment_id: str, run_name: str, params: dict[str, str]) -> str:
    """Create the run's logged model (PENDING) before its test pass, so the test metrics are logged linked to it;
    its id. Named after the run (model_name), its loss and impl as tags."""
    tags = {k: params[k] for k in ("loss", "impl") if k in params}
    # Created for our run explicitly: the fluent `mlflow.start_run` would set the run's status on exit
    return mlflow.initialize_logged_model(name=model_name(run_name, run_id), source_run_id=run_id,
                                          experiment_id=experiment_id, params=params, tags=tags,
                                          model_type="softmax-regression").model_id


def log_model(client, run_id: str, model_id: str, classifier: LinearClassifier, example: np.ndarray, step: int,
              metrics: dict[str, float], registered_model_name: str | None = None) -> str:
    """Save the classifier into the logged model `model_id` (start_model) and list it as the run's output; its
    `models:/` URI. A registered version (logger.registered_model_name) gets the model's tags, `metrics` as tags
    and a description. `example`: float32 (n, 784) test images as the model takes them."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import infer_signature

    from softmax_lab.tracking.run_fields import readable

    model, logged = SoftmaxRegressionPyfunc(classifier), mlflow.get_logged_model(model_id)
    with mlflow_advice_filtered():
        signature = infer_signature(example, model.predict(None, example))
        info = mlflow.pyfunc.log_model(
            name=logged.name, python_model=model, signature=signature, input_example=example, model_id=model_id,
            registered_model_name=registered_model_name, await_registration_for=0,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy",
                              "pandas"],
            code_paths=[str(Path(__file__).parents[1])])  # the package travels with the model
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=step)])
    if registered_model_name and info.registered_model_version is not None:
        version, tags = str(info.registered_model_version), {k: logged.tags[k] for k in ("loss", "impl")
                                                              if k in logged.tags}
        for k, v in {**tags, **{k: f"{readable(v):g}" for k, v in metrics.items()}}.items():
            client.set_model_version_tag(registered_model_name, version, k, v)
        client.update_model_version(registered_model_name, version, description=(
            f"{logged.name}: " + ", ".join(f"{k} {readable(v):.4f}" for k, v in metrics.items())
            + f". Trained by run {run_id} (" + ", ".join(f"{k}={v}" for k, v in tags.items()) + ")."))
    return info.model_uri
