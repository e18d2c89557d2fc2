"""A store's or a study's password is written nowhere: console.redact_text on every form a URL takes in what we write
(as typed, as Hydra escapes it in a sweep, as JSON escapes that), the logging filter on Hydra's handlers, write_text,
and the MLflow client every job writes through. The whole path, on a real PostgreSQL server: test_team_postgres.py."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow.entities import Param, RunTag

from softmax_lab.console import SecretFilter, redact_text
from softmax_lab.files import write_text
from softmax_lab.tracking.store import secret_free_client

PW = "S3kr3t.pw"


@pytest.mark.parametrize(("text", "said"), [
    (f"logger.tracking_uri=postgresql://lab:{PW}@db:5432/mlflow", "logger.tracking_uri=postgresql://lab:***@db:5432/mlflow"),
    (f"postgresql+psycopg2://lab:{PW}@db/x and http://u:{PW}@h:5000", "postgresql+psycopg2://lab:***@db/x and http://u:***@h:5000"),
    (rf"x=postgresql\://lab\:{PW}@127.0.0.1\:5432/optuna", r"x=postgresql\://lab\:***@127.0.0.1\:5432/optuna"),
    (json.dumps(rf"postgresql\://lab\:{PW}@h\:1/d"), json.dumps(r"postgresql\://lab\:***@h\:1/d")),
    (f"'mysql://root:{PW}@localhost/db'", "'mysql://root:***@localhost/db'"),
])
def test_every_form_of_a_url_loses_its_password(text, said):
    assert redact_text(text) == said


@pytest.mark.parametrize("text", ["sqlite:////tmp/a@b/mlflow.db", "https://user@host/x", "mail lab@host", "a=b:c@d",
                                  "http://127.0.0.1:5000/#/experiments/1", "data.data_dir=/srv/x:y"])
def test_text_without_a_password_is_left_as_it_is(text):
    assert redact_text(text) == text


def test_the_logging_filter_takes_the_password_out_of_a_record_and_its_exception():
    try:
        raise ValueError(f"cannot reach postgresql://lab:{PW}@db/x")
    except ValueError as e:
        record = logging.LogRecord("hydra", logging.ERROR, __file__, 1, "#%d : %s", (0, f"s=sqlite:// u=postgresql://"
                                   f"lab:{PW}@db/x"), (type(e), e, e.__traceback__))
    assert SecretFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert PW not in formatted and "#0 : s=sqlite:// u=postgresql://lab:***@db/x" in formatted


def test_write_text_writes_no_password(tmp_path):
    path = write_text(tmp_path / "overrides.yaml", f"- hydra.sweeper.storage=postgresql://lab:{PW}@db/optuna\n")
    assert path.read_text() == "- hydra.sweeper.storage=postgresql://lab:***@db/optuna\n"


def test_the_mlflow_client_sends_no_password(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = secret_free_client()(uri)
    secret = f"logger.tracking_uri=postgresql://lab:{PW}@db/mlflow"
    exp = client.create_experiment("e")
    client.set_experiment_tag(exp, "note", secret)
    run = client.create_run(exp, tags={"overrides": secret}, run_name=secret).info.run_id
    client.set_tag(run, "mlflow.note.content", secret)
    client.log_param(run, "p", secret)
    client.log_batch(run, params=[Param("q", secret)], tags=[RunTag("t", secret)])
    client.update_run(run, name=f"sweep: {secret}")
    stored = client.get_run(run)
    fields = [stored.info.run_name, *stored.data.tags.values(), *stored.data.params.values(),
              *client.get_experiment(exp).tags.values()]
    assert not [f for f in fields if PW in f]
    assert stored.data.params["q"] == "logger.tracking_uri=postgresql://lab:***@db/mlflow"
