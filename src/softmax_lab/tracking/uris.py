"""Which store a run writes to, and the links that open it in the MLflow UI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from softmax_lab.config import PROJECT_ROOT

UI_VIEW = "workflowType=machine_learning"  # MLflow 3's UI opens its GenAI view without it
# The runs table's columns and order cannot be set by a URL; MLflow's "shared view" can: an experiment tag
# mlflow.sharedViewState.<key> holding the view as JSON, opened by ?viewStateShareKey=<key> (MLflow 3.17's UI)
VIEW_KEY = "softmax-lab"
RUNS_COLUMNS = ["tags.`loss`", "tags.`impl`", "params.`optimizer.lr`", "metrics.`val/acc_best`", "metrics.`test/acc`",
                "metrics.`test/ece`"]


def runs_view() -> tuple[str, str]:
    """(tag key, JSON): the runs table with loss, impl, optimizer.lr, val/acc_best, test/acc and test/ece as
    columns, best test accuracy first."""
    view = {"searchFilter": "", "orderByKey": "metrics.`test/acc`", "orderByAsc": False, "startTime": "ALL",
            "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
            "selectedColumns": RUNS_COLUMNS}
    return f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(view)


def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'outputs' / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else the project's sqlite store."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI, absolute, resolved as MLflow (SQLAlchemy) does: `sqlite:///rel.db`
    is relative to the working directory, `sqlite:////abs.db` absolute. None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser().resolve()


def artifact_location_for(uri: str) -> str | None:
    """A sqlite store keeps its artifacts beside the database (not in the working directory);
    a server decides for itself."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").as_uri() if db is not None else None


def ui_base(uri: str, port: int = 5000) -> str:
    """Where the UI for a store is: a tracking server is its own UI; a sqlite store is served by `make ui`."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table, in the model-training view even on a browser that never opened MLflow."""
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&{UI_VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


def browse_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """The lines a run prints at its end: how to open the store, and the links to its runs and to itself."""
    base = ui_base(uri)
    links = f"runs: {runs_url(base, experiment_id)}\nthis run: {run_url(base, experiment_id, run_id)}"
    if uri == default_tracking_uri():
        return f"browse: make ui, then open\n{links}"
    if uri.startswith("sqlite:"):
        return f"browse: make ui STORE={uri}, then open\n{links}"
    return f"browse:\n{links}"
