"""A sweep's summary: one row per job, from MLflow (its child runs) and from the job outcome files (jobs that never
got a run), as a csv, a markdown table and a chart; the best job; the parent run's description."""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from softmax_lab.console import short_overrides
from softmax_lab.files import write_text
from softmax_lab.tracking.sweep_jobs import read_outcome

COLUMNS = ["job", "overrides", "loss", "impl", "status", "val_acc_best", "test_acc", "test_ece", "test_nll",
           "epoch_s", "run_id", "failure_reason"]
SHOWN = COLUMNS[:10]  # the markdown table and the printout


def _job_dirs(sweep_dir: Path) -> dict[int, Path]:
    """The job dirs Hydra made under the sweep dir (each holds .hydra/), by job number."""
    dirs = {}
    for d in sweep_dir.iterdir() if sweep_dir.is_dir() else []:
        if (d / ".hydra").is_dir() and d.name.isdigit():
            dirs[int(d.name)] = d
    return dirs


def outcome_rows(sweep_dir: Path, known_jobs: set[int], since: float | None = None) -> list[dict]:
    """Rows for jobs MLflow does not know (refused before their run existed, or not tracked), from their
    job_outcome.json; a job dir without a readable one is a job that never reported (killed): LOST. A job dir from
    before `since` (an earlier command's, in the same sweep dir: a search continued there) is not this sweep's."""
    rows = []
    for job, d in sorted(_job_dirs(sweep_dir).items()):
        if job in known_jobs or since is not None and (d / ".hydra").stat().st_mtime < since:
            continue
        o = read_outcome(d)
        m = o.get("metrics") if isinstance(o.get("metrics"), dict) else {}
        rows.append({"job": job, "overrides": o.get("overrides", ""), "loss": o.get("loss", "?"),
                     "impl": o.get("impl", "?"), "status": o["status"], "val_acc_best": m.get("val/acc_best"),
                     "test_acc": m.get("test/acc"), "test_ece": m.get("test/ece"), "test_nll": m.get("test/nll"),
                     "epoch_s": None, "run_id": "", "failure_reason": str(o.get("reason", ""))[:200]})
    return rows


def summary_rows(client, experiment_id: str, parent_run_id: str) -> list[dict]:
    """One row per child run of the sweep's parent: its job, overrides, status, results and median epoch time."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=10000)
    rows = []
    for r in runs:
        m, t = r.data.metrics, r.data.tags
        status = "PRUNED" if t.get("optuna_state") == "PRUNED" else r.info.status  # an Optuna trial stopped early
        epochs = [x.value for x in client.get_metric_history(r.info.run_id, "time/epoch_s")]
        rows.append({
            "job": int(t.get("job_num", -1)), "overrides": t.get("overrides", ""), "loss": t.get("loss", "?"),
            "impl": t.get("impl", "?"), "status": status, "val_acc_best": m.get("val/acc_best"),
            "test_acc": m.get("test/acc"), "test_ece": m.get("test/ece"), "test_nll": m.get("test/nll"),
            "epoch_s": statistics.median(epochs) if epochs else None, "run_id": r.info.run_id,
            "failure_reason": t.get("failure_reason", "")[:200],
        })
    return sorted(rows, key=lambda r: r["job"])


def ranked(rows: list[dict]) -> list[dict]:
    """The sweep's answer in order: finished jobs by val/acc_best (test accuracy breaks ties), then pruned ones, then
    those that did not finish."""
    def key(r):
        group = {"FINISHED": 0, "PRUNED": 1}.get(r["status"], 2)
        return group, -(r["val_acc_best"] or 0), -(r["test_acc"] or 0), r["job"]

    return sorted(rows, key=key)


def best_row(rows: list[dict]) -> dict | None:
    """The finished job with the best val/acc_best (the sweep's objective); test accuracy breaks ties."""
    top = ranked([r for r in rows if r["val_acc_best"] is not None])
    return top[0] if top and top[0]["status"] == "FINISHED" else None


def _cell(v) -> str:
    """A table's cell: a result to 4 decimals; a job's overrides with their values short (exact in the csv)."""
    return f"{v:.4f}" if isinstance(v, float) else short_overrides(v) if isinstance(v, str) else str(v)


def markdown_table(rows: list[dict], columns=SHOWN) -> str:
    """The rows as a markdown table; a missing value is '-'."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) if r[c] is not None else "-" for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_summary(rows: list[dict], sweep_dir: Path) -> list[Path]:
    """sweep_summary.csv, .md and .png in the sweep dir."""
    from softmax_lab.pictures.charts import sweep_chart

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return [write_text(sweep_dir / "sweep_summary.csv", table.getvalue()),
            write_text(sweep_dir / "sweep_summary.md", "# Sweep summary\n\n" + markdown_table(rows)),
            sweep_chart(rows, sweep_dir / "sweep_summary.png")]


def parent_description(rows: list[dict], best: dict | None, failed: int, experiment_id: str | None = None,
                       stopped: str | None = None) -> str:
    """The parent run's description: the result (chosen by validation, as the sweep's objective; the best on test
    accuracy and on calibration named beside it), a link to each job's run, the table without the overrides that
    every job shares (said once above it)."""
    def job_link(r: dict) -> str:
        if r.get("run_id") and experiment_id is not None:
            return f"[job {r['job']}](#/experiments/{experiment_id}/runs/{r['run_id']})"
        return f"job {r['job']}"

    head = f"**Sweep of {len(rows)} jobs, {failed} not finished.**" + (f" **Stopped**: {stopped}." if stopped else "")
    if best is not None:
        head += (f"\n\n**Best by validation** (val/acc_best, the sweep's objective): {job_link(best)} "
                 f"`{short_overrides(best['overrides'])}`, val/acc_best {best['val_acc_best']:.4f}, "
                 f"test/acc {best['test_acc']:.4f}.")
        done = [r for r in rows if r["status"] == "FINISHED"]
        on_test = max((r for r in done if r["test_acc"] is not None), key=lambda r: r["test_acc"], default=None)
        on_ece = min((r for r in done if r["test_ece"] is not None), key=lambda r: r["test_ece"], default=None)
        if on_test is not None:
            head += f" Best on test accuracy: {job_link(on_test)} ({on_test['test_acc']:.4f})."
        if on_ece is not None:
            head += f" Best calibrated (lowest test ECE): {job_link(on_ece)} ({on_ece['test_ece']:.4f})."
    rows = [{**r, "overrides": short_overrides(r["overrides"])} for r in rows]  # exact values: the jobs' params
    tokens = [r["overrides"].split() for r in rows]
    shared = [t for t in tokens[0] if all(t in ts for ts in tokens)] if len(rows) > 1 else []
    if shared:
        head += f"\n\nEvery job: `{' '.join(shared)}`."
        rows = [{**r, "overrides": " ".join(t for t in r["overrides"].split() if t not in shared)} for r in rows]
    linked = []
    for r in rows:  # each job links its run; the best one is marked
        job = f"[{r['job']}](#/experiments/{experiment_id}/runs/{r['run_id']})" if r.get("run_id") and \
            experiment_id is not None else str(r["job"])
        linked.append({**r, "job": f"**{job} best**" if best is not None and r["job"] == best["job"] else job})
    return head + "\n\n" + markdown_table(linked)
