"""Which store a run writes to, and the links that open it in the MLflow UI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from softmax_lab.config import PROJECT_ROOT, launch_relative
from softmax_lab.console import redact_text

UI_VIEW = "workflowType=machine_learning"  # MLflow 3's UI opens its GenAI view without it
# The runs table's columns, filter and charts cannot all be set by a URL; MLflow's "shared view" can: an experiment
# tag mlflow.sharedViewState.<key> holding the view as JSON, opened by ?viewStateShareKey=<key> (MLflow 3.17's UI)
VIEW_KEY = "softmax-lab"
# The leaderboard: training runs only (not sweep parents, evaluations or pruned trials), each with its sweep and state
LEADERBOARD_FILTER = "tags.kind = 'train' AND tags.state != 'pruned'"
RUNS_COLUMNS = ["tags.`sweep`", "tags.`state`", "tags.`loss`", "tags.`impl`", "params.`optimizer.lr`",
                "metrics.`val/acc_best`", "metrics.`test/acc`", "metrics.`test/ece`"]
ALL_RUNS = {"startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": []}


def runs_view() -> tuple[str, str]:
    """(tag key, JSON): the leaderboard of training runs, best test accuracy first, with their sweep and state."""
    view = {"searchFilter": LEADERBOARD_FILTER, "orderByKey": "metrics.`test/acc`", "orderByAsc": False, **ALL_RUNS,
            "selectedColumns": RUNS_COLUMNS}
    return f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(view)


def sweep_view_key(parent_run_id: str) -> str:
    return f"sweep-{parent_run_id}"


def sweep_view(parent_run_id: str, swept_keys: list[str]) -> tuple[str, str]:
    """(tag key, JSON): one sweep's jobs ranked as its answer (sweep_rank), the swept keys, state and results as
    columns, every job drawn (MLflow draws the first 10 by default): test accuracy against calibration (ECE), and
    the validation accuracy and loss of every job against the epoch."""
    def line(uid: str, key: str) -> dict:
        return {"uuid": uid, "type": "LINE", "metricSectionId": "sweep", "isGenerated": False, "deleted": False,
                "runsCountToCompare": 100, "metricKey": key, "selectedMetricKeys": [key], "xAxisKey": "metric",
                "selectedXAxisMetricKey": "epoch", "useGlobalXaxisKey": False, "scaleType": "linear",
                "xAxisScaleType": "linear", "lineSmoothness": 0, "useGlobalLineSmoothing": False,
                "range": {}, "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False}

    scatter = {"uuid": "sweep-acc-ece", "type": "SCATTER", "metricSectionId": "sweep", "isGenerated": False,
               "deleted": False, "runsCountToCompare": 100, "xaxis": {"key": "test/ece", "type": "METRIC"},
               "yaxis": {"key": "test/acc", "type": "METRIC"}}
    columns = [f"params.`{k}`" for k in swept_keys] + ["tags.`state`", "tags.`sweep_rank`", "metrics.`val/acc_best`",
                                                       "metrics.`test/acc`", "metrics.`test/ece`"]
    # ranked as the sweep's answer (sweep_rank: by val/acc_best, pruned and unfinished jobs below); sorted by creation
    # time, MLflow would fold the jobs under their parent and chart none of them
    view = {"searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'", "orderByKey": "tags.`sweep_rank`",
            "orderByAsc": True, **ALL_RUNS, "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL",
            "compareRunCharts": [scatter, line("sweep-val-acc", "val/acc"), line("sweep-val-loss", "val/loss")],
            "compareRunSections": [{"uuid": "sweep", "name": "This sweep", "display": True, "isReordered": False,
                                    "deleted": False, "isGenerated": False}],
            "isAccordionReordered": True}
    return f"mlflow.sharedViewState.{sweep_view_key(parent_run_id)}", json.dumps(view)


def default_tracking_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'outputs' / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """logger.tracking_uri, else $MLFLOW_TRACKING_URI, else the project's sqlite store; a relative sqlite path from
    the launch directory (config.launch_relative)."""
    return launch_relative(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")) or default_tracking_uri()


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


def sweep_url(base: str, experiment_id: str, parent_run_id: str) -> str:
    """One sweep's jobs (sweep_view), opened on its charts."""
    return (f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={sweep_view_key(parent_run_id)}"
            f"&compareRunsMode=CHART&{UI_VIEW}")


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


def browse_hint(uri: str, experiment_id: str, run_id: str, sweep: bool = False) -> str:
    """The lines a run (or a sweep, whose parent is `run_id`) prints at its end: how to open the store, and the
    links to the leaderboard and to the run itself (a sweep: its own view of its jobs)."""
    base = ui_base(uri)
    own = f"this sweep: {sweep_url(base, experiment_id, run_id)}" if sweep else \
        f"this run: {run_url(base, experiment_id, run_id)}"
    links = f"runs: {runs_url(base, experiment_id)}\n{own}"
    if uri == default_tracking_uri():
        return f"browse: make ui, then open\n{links}"
    if uri.startswith("sqlite:"):
        return f"browse: make ui STORE={uri}, then open\n{links}"
    if not uri.startswith(("http://", "https://", "databricks")):  # a database: `make ui` serves it too
        return f"browse: make ui STORE='{redact_text(uri)}' (with your password for ***), then open\n{links}"
    return f"browse: the tracking server is its UI\n{links}"
