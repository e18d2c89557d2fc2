"""A real `mlflow server` on loopback serves a training run over the REST API the UI uses, and the link a run
prints opens its runs table in a real browser (headless Chromium) that has never opened MLflow before."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT, unmeasured_env
from softmax_lab.jobs.train_job import train

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


def chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CI") == "true":
        pytest.fail("CI=true but chromium is missing (.ci/run installs Debian's chromium package)")
    return found


def rendered_page(browser: str, url: str, profile) -> str:
    """The page as a fresh headless Chromium renders it (a new profile: nothing remembered from earlier visits)."""
    r = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                        "--window-size=1400,900", "--virtual-time-budget=20000", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    return r.stdout


def chart_sections(browser: str, url: str, profile) -> list[tuple[str, str]]:
    """The chart sections a page shows, as (name, number of charts); one more try if the page was not drawn yet."""
    for attempt in range(2):
        page = rendered_page(browser, url, f"{profile}-{attempt}")
        found = re.findall(r"\b([a-z]+) ?\( ?(\d+) ?\)", re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))
        if found:
            return found
    return []


def test_the_ui_server_serves_the_run_with_its_pictures(make_cfg, tmp_path, capsys):
    train(make_cfg("loss=mse", "impl=func"))  # a second run to compare with
    capsys.readouterr()
    metrics = train(make_cfg("loss=huber", "impl=scratch"))
    links = [w for w in capsys.readouterr().out.split() if w.startswith("http://127.0.0.1:5000/")]
    assert len(links) == 2 and all("workflowType=machine_learning" in u for u in links)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=ROOT, env=unmeasured_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                exps = json.loads(get(f"{base}/api/2.0/mlflow/experiments/search?max_results=10"))
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        ids = [e["experiment_id"] for e in exps["experiments"] if e["name"] == "fashion-mnist-softmax"]
        runs = post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": ids})["runs"]
        assert len(runs) == 2
        run = next(r for r in runs if r["info"]["run_name"] == "loss=huber impl=scratch")
        assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "loss=huber impl=scratch"
        got = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert got["test/acc"] == pytest.approx(metrics["test/acc"])
        run_id = run["info"]["run_id"]
        listed = json.loads(get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=pictures"))
        assert {f["path"] for f in listed["files"]} >= {"pictures/curves.png", "pictures/samples.png"}
        png = get(f"{base}/get-artifact?path=pictures/curves.png&run_uuid={run_id}")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        browser = chromium()
        if browser is None:
            pytest.skip("headless Chromium is not installed (apt-get install chromium): the browser check is skipped")
        runs_table = links[0].replace("http://127.0.0.1:5000", base)
        page = rendered_page(browser, runs_table, tmp_path / "profile")
        assert "loss=huber impl=scratch" in page, page[-2000:]  # the runs table, not MLflow's GenAI view
        headers = re.findall(r'role="columnheader"[^>]*>(.*?)</div>', page)
        text = re.sub(r"<[^>]+>", " ", page)
        for column in ("test/acc", "test/ece", "val/acc_best", "optimizer.lr", "impl"):  # the shared view's columns
            assert column in text, (column, headers[:20])
        # the compare view and the run's Model metrics tab: the five results in their own section (logged at step 0:
        # MLflow draws them as bars), then the learning curves' sections, and no `epoch` chart. Headless Chromium
        # draws only the charts it scrolls to, so the sections and their chart counts are what can be read here.
        for i, url in enumerate([runs_table + "&compareRunsMode=CHART", links[1].replace(
                "http://127.0.0.1:5000", base).replace(f"runs/{run_id}?", f"runs/{run_id}/model-metrics?")]):
            found = chart_sections(browser, url, tmp_path / f"profile{i}")
            assert [name for name, _ in found][:4] == ["test", "time", "train", "val"], found
            assert found[0][1] == "5", found  # test/acc, loss, nll, ece, brier
    finally:
        server.terminate()
        server.wait(timeout=30)


def start_server(db, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"], cwd=ROOT,
        env=unmeasured_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while True:
        try:
            get(f"http://127.0.0.1:{port}/health")
            return server
        except OSError:
            assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
            time.sleep(0.3)


def test_a_server_that_goes_away_mid_run_ends_it_in_seconds_and_the_resume_sends_what_it_kept(tiny_data, tmp_path):
    """The server is killed and stays down: the run stops after MLflow's retries (here set short through MLflow's
    own variables, which the project honours), with one line naming the server, exit 1, the metrics it could not send
    in the run dir. The server comes back: the resume sends them first, and the run's history has every epoch once."""
    import signal

    from mlflow.tracking import MlflowClient

    port, run_dir = free_port(), tmp_path / "run"
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path / "server.db", port)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    args = [f"data.data_dir={tiny_data}", "data.val_size=100", "trainer.enable_progress_bar=false"]
    proc = subprocess.Popen([sys.executable, "src/train.py", *args, "trainer.max_epochs=2000",
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        deadline = time.time() + 120
        while not last.exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    t0 = time.time()
    out, _ = proc.communicate(timeout=180)
    waited = time.time() - t0
    assert proc.returncode == 1, out
    said = [line for line in out.splitlines() if "error:" in line]
    assert len(said) == 1 and f"tracking server {uri} stopped answering" in said[0] and "ckpt_path=" in said[0], out
    assert waited < 60, waited
    kept = json.loads((run_dir / "mlflow_unsent.json").read_text())
    assert {m["key"] for m in kept} >= {"val/acc", "train/loss"}

    server = start_server(tmp_path / "server.db", port)
    try:
        done = subprocess.run([sys.executable, "src/train.py", *args, "trainer.max_epochs=300", f"ckpt_path={last}"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        client = MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name("fashion-mnist-softmax").experiment_id])[0]
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert sorted(steps) == list(range(2, 602, 2)), steps  # 300 epochs of 2 steps, each once
        assert not (run_dir / "mlflow_unsent.json").exists()
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
