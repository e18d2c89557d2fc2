"""The logged model checks its input, loaded (mlflow.pyfunc) and served by a real `mlflow models serve` process:
pixels outside [0, 1] and non-finite pixels are a 400 with one sentence, an empty batch an empty answer (from Python;
over HTTP, MLflow's own schema check refuses `[]`), good pixels the classes and probabilities."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from conftest import ROOT, mlflow_runs, unmeasured_env
from softmax_lab.jobs.train_job import train
from test_mlflow_server import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_uri(tmp_path_factory, tiny_data):
    from conftest import compose, tiny_overrides

    folder = tmp_path_factory.mktemp("served")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    train(compose(tiny_overrides(tiny_data, f"logger.tracking_uri={store}"), folder / "run"))
    mlflow.set_tracking_uri(store)
    _, runs = mlflow_runs(store)
    [model] = mlflow.search_logged_models(experiment_ids=[runs[0].info.experiment_id], output_format="list")
    return store, model.model_uri


def bad_inputs() -> dict[str, np.ndarray]:
    good = np.full((3, 784), 0.5, np.float32)
    nan, inf, bytes_ = good.copy(), good.copy(), good * 255
    nan[1, 7], inf[2, 0] = np.nan, np.inf
    return {"nan": nan, "inf": inf, "0..255": bytes_, "negative": good - 1, "27 pixels": good[:, :27]}


@pytest.mark.parametrize("case", bad_inputs())
def test_the_loaded_model_refuses_bad_pixels_in_one_sentence(model_uri, case):
    model = mlflow.pyfunc.load_model(model_uri[1])
    with pytest.raises(MlflowException) as e:
        model.predict(bad_inputs()[case])
    message = e.value.message
    if case == "27 pixels":  # MLflow's own schema check (the signature's (-1, 784)) refuses it first
        assert "does not match expected shape (-1, 784)" in message
        return
    assert "[0, 1]" in message and "\n" not in message
    assert {"nan": "non-finite", "inf": "non-finite", "0..255": "divide 0..255 images by 255",
            "negative": "outside [0, 1]"}[case] in message


def test_the_loaded_model_answers_an_empty_batch_with_an_empty_table(model_uri):
    model = mlflow.pyfunc.load_model(model_uri[1])
    out = model.predict(np.zeros((0, 784), np.float32))
    full = model.predict(model.input_example)
    assert len(out) == 0 and list(out.columns) == list(full.columns)


def test_the_served_model_answers_400_for_bad_pixels_and_rows_for_good_ones(model_uri, tmp_path):
    store, uri = model_uri
    port = free_port()
    # as the README says: make serve MODEL=... (it puts the venv's bin/, where MLflow finds uvicorn, on the PATH)
    server = subprocess.Popen(["make", "--no-print-directory", "serve", f"MODEL={uri}", f"SERVE_PORT={port}"], cwd=ROOT,
                              env=unmeasured_env({"MLFLOW_TRACKING_URI": store}), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)

    def invoke(rows) -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": rows}).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    try:
        for _ in range(120):  # the server starts in seconds
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                time.sleep(1)
        good = np.full((2, 784), 0.25, np.float32)
        status, body = invoke(good.tolist())
        assert status == 200 and len(body["predictions"]) == 2
        assert 0 < body["predictions"][0]["probability"] <= 1
        for case, rows in bad_inputs().items():
            status, body = invoke(rows.tolist())  # NaN and Infinity as Python's json writes them
            assert status == 400, (case, status, body)
            assert "[0, 1]" in body["message"] or "784" in body["message"], (case, body)
        # JSON cannot say the shape of an empty batch ([] is not (0, 784)): MLflow's own schema check refuses it
        # before the model sees it, a 400 saying so (README); from Python, an empty batch is an empty table
        status, body = invoke([])
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE" and "schema" in body["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the server it started
        server.wait(timeout=30)


def test_make_serve_without_a_model_says_how_in_one_line():
    r = subprocess.run(["make", "--no-print-directory", "serve"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "make serve needs MODEL=models:/<model id>" in r.stdout
