"""The README's screenshots of the MLflow UI, taken in a driven headless Chromium (Debian's `chromium`).

    pip install -c constraints.txt -e '.[docs]'          # playwright, pointed at the system's Chromium
    python docs/screenshots.py --store sqlite:////abs/path/mlflow.db --out docs/

Serves the store with `mlflow server` on a free loopback port, opens the pages a user is given (the leaderboard
link, a sweep's own link, the Models page, an eval run, a search's parent run) and saves each as a PNG. MLflow's pages
never reach network idle (they poll): each is given a fixed time to draw and is scrolled once to wake lazy charts."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

WAIT_S = 8  # for a page to draw its table or charts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(store: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("mlflow server did not start")


def pages(store: str, base: str) -> dict[str, str]:
    """File name -> URL of each page the README shows."""
    from softmax_lab.tracking.uris import UI_VIEW, runs_url, sweep_url

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("fashion-mnist-softmax")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    sweep = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    search = next(r for r in runs if r.data.tags.get("kind") == "search")
    evaluation = next(r for r in runs if r.data.tags.get("kind") == "eval")
    run_page = f"{base}/#/experiments/{exp.experiment_id}/runs/{{}}?{UI_VIEW}"
    return {"ui_runs.png": runs_url(base, exp.experiment_id),
            "ui_compare.png": runs_url(base, exp.experiment_id).replace("?", "?compareRunsMode=CHART&", 1),
            "ui_sweep.png": sweep_url(base, exp.experiment_id, sweep.info.run_id),
            "ui_sweep_table.png": sweep_url(base, exp.experiment_id, sweep.info.run_id).replace("=CHART", "=TABLE"),
            "ui_search.png": sweep_url(base, exp.experiment_id, search.info.run_id),
            "ui_models.png": f"{base}/#/experiments/{exp.experiment_id}/models?{UI_VIEW}",
            "ui_eval_run.png": run_page.format(evaluation.info.run_id),
            "ui_search_parent.png": run_page.format(search.info.run_id)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = serve(a.store, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # MLflow 3.17 opens its Assistant panel beside the page on a first visit: as a user who closed it once
            page.add_init_script("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                                 "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
            for name, url in pages(a.store, f"http://127.0.0.1:{port}").items():
                page.goto(url)
                time.sleep(WAIT_S)
                page.mouse.wheel(0, 400)
                time.sleep(1)
                page.mouse.wheel(0, -400)
                time.sleep(1)
                page.screenshot(path=str(a.out / name))
                print(a.out / name, flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
