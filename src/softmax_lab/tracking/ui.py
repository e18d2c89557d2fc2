"""`make ui`: print the links that open the store's runs, then serve it with `mlflow server` on loopback.

MLflow 3's UI opens an experiment in its GenAI view unless the link asks for the model-training
view (`?workflowType=machine_learning`), so the links printed here, like a run's closing summary,
carry it: they open the runs table even on a browser that has never opened MLflow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from softmax_lab.console import redact
from softmax_lab.tracking.store import store_errors
from softmax_lab.tracking.uris import runs_url, sqlite_path, ui_base


def experiment_links(store: str, port: int) -> list[str]:
    """One line per experiment of the store that holds runs: its name and the link to its runs table."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(store)
    if db is not None and not db.exists():
        return []
    client = MlflowClient(store)
    base = ui_base("sqlite:", port)
    lines = []
    for exp in client.search_experiments():
        if exp.name == "Default" and not client.search_runs([exp.experiment_id], max_results=1):
            continue
        lines.append(f"  {exp.name}: {runs_url(base, exp.experiment_id)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--store", required=True, help="the tracking store, e.g. sqlite:////abs/path/mlflow.db")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--host", default="127.0.0.1")
    a = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # MLflow's store start-up messages
    try:
        links = experiment_links(a.store, a.port)
    except store_errors() as e:
        sys.exit(f"make ui: the store {redact(a.store)} cannot be read ({str(e).splitlines()[0][:200]}). "
                 "Fix: STORE=sqlite:////abs/path/mlflow.db, as printed at the end of a run.")
    logging.disable(logging.NOTSET)
    print(f"MLflow UI for {redact(a.store)} on http://{a.host}:{a.port} (Ctrl-C stops it). Open:", flush=True)
    print("\n".join(links) if links else f"  (no runs yet: train first, then open http://{a.host}:{a.port})",
          flush=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # starts in seconds, not a minute
    os.execve(sys.executable, [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", a.store,
                               "--host", a.host, "--port", str(a.port), "--workers", "1"], env)


if __name__ == "__main__":
    main()
