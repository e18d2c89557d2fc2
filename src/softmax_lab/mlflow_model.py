"""A run's best model as an MLflow model (pyfunc): Fashion-MNIST pixels in, classes and probabilities out.

    model = mlflow.pyfunc.load_model("models:/<model id>")   # or runs:/..., or the registry's name
    model.predict(pixels)   # float32 (n, 784) in [0, 1]: 28x28 images flattened, light object on dark

Output: a DataFrame with `class_id`, `class_name`, `probability` (softmax of the logits, the model's own
probability; see the README on calibration) and one `p_<class name>` column per class. The model prepares
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

from softmax_lab.data import prepare_pixels


class SoftmaxRegressionPyfunc(mlflow.pyfunc.PythonModel):
    """W, b, the class names and the data preparation of one run (see the module docstring)."""

    def __init__(self, W: np.ndarray, b: np.ndarray, class_names: list[str], resize: int | None, mean: float,
                 std: float):
        self.W, self.b, self.class_names = W, b, list(class_names)
        self.resize, self.mean, self.std = resize, mean, std

    def predict(self, context, model_input: TypeFromExample, params=None) -> pd.DataFrame:
        # TypeFromExample: MLflow takes the input's type from the input example (a float32 array)
        X = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        X = prepare_pixels(X.reshape(len(X), -1), self.resize, self.mean, self.std)
        P = torch.softmax(X @ torch.from_numpy(self.W) + torch.from_numpy(self.b), dim=1).numpy()
        ids = P.argmax(axis=1)
        columns = {"class_id": ids, "class_name": [self.class_names[i] for i in ids], "probability": P.max(axis=1)}
        columns.update({f"p_{name.replace(' ', '_')}": P[:, i] for i, name in enumerate(self.class_names)})
        return pd.DataFrame(columns)


def pyfunc_of(module, datamodule) -> SoftmaxRegressionPyfunc:
    """The module's current weights (after testing: the best checkpoint's) with the data's preparation."""
    W, b = (module.net.W, module.net.b) if module.impl == "scratch" else (module.net[1].weight.T, module.net[1].bias)
    return SoftmaxRegressionPyfunc(W.detach().float().cpu().numpy().copy(), b.detach().float().cpu().numpy().copy(),
                                   datamodule.class_names, datamodule.resize, datamodule.mean, datamodule.std)


def input_example(datamodule, n: int = 5) -> np.ndarray:
    """The first n official test images as the model takes them: float32 (n, 784) in [0, 1]."""
    X, _ = datamodule.raw_test_images(n)
    return X.reshape(n, -1).numpy().astype(np.float32)


def log_model(client, run_id: str, experiment_id: str, module, datamodule, params: dict[str, str],
              registered_model_name: str | None = None) -> str:
    """Log the model to the run, listed under the experiment's Logged models; its `models:/` URI."""
    model = pyfunc_of(module, datamodule)
    example = input_example(datamodule)
    with quiet_mlflow():
        return _log(client, run_id, experiment_id, module, model, example, params, registered_model_name)


@contextlib.contextmanager
def quiet_mlflow():
    """MLflow's advice printed at every log_model (type hints, integer columns, cloudpickle) is not the user's."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _log(client, run_id, experiment_id, module, model, example, params, registered_model_name) -> str:
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import infer_signature

    signature = infer_signature(example, model.predict(None, example))
    # Created for our run explicitly: the fluent `mlflow.start_run` would set the run's status on exit
    logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=experiment_id,
                                            params=params, model_type="softmax-regression")
    info = mlflow.pyfunc.log_model(
        name="model", python_model=model, signature=signature, input_example=example, model_id=logged.model_id,
        registered_model_name=registered_model_name, await_registration_for=0,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy",
                          "pandas"],
        code_paths=[str(Path(__file__).parent)])  # the package travels with the model
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=module.global_step)])
    return info.model_uri
