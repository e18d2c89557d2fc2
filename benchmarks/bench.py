"""How fast is an epoch, and where does a run's time go? `make bench` (or `python benchmarks/bench.py`).

In one process, on the same in-memory batches (batch 256, the 55k training split):
  textbook_w0/w2  torchvision FashionMNIST + ToTensor + DataLoader (0 / 2 workers), hand-written softmax,
                  cross-entropy and SGD: the d2l chapter's pipeline
  plain_autograd  a plain torch loop: nn.Linear + F.cross_entropy + autograd + torch.optim.SGD
  plain_analytic  the same loop with this project's analytic gradient and SGD step
  ours_nn/scratch/func  src/train.py's train() with everything a user gets: Trainer, DataModule, metrics,
                  checkpoints, progress bar and MLflow logging (into a temporary store), in the default
                  mode (Lightning's own step semantics) and, as *_speed, in the speed mode
                  (data.batches_per_step=8)
Each is reported as the median epoch after a warm-up epoch, and as a ratio to plain_autograd. Every
pipeline but the textbook's is measured three times, interleaved, and the fastest counts (this machine is shared
and noisy: the same code's epoch varies by 10-25% between runs). Then what a user waits for, end to end, each in
a fresh process: `python src/train.py` (10 epochs) for both impls in the default and the speed mode, and the
8-job loss x impl sweep in both modes: wall time and peak memory. The Optuna search's own cost per trial and one
worker against two on a 10-trial search (benchmarks/search_bench.py). Results: a table, and outputs/bench/epoch.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from softmax_lab.config import compose  # noqa: E402
from softmax_lab.data.locate import locate_fashion_mnist  # noqa: E402
from softmax_lab.maths.losses import CrossEntropy  # noqa: E402
from softmax_lab.maths.sgd import ScratchSGD  # noqa: E402
from softmax_lab.maths.softmax_regression import ScratchSoftmaxRegression  # noqa: E402

BATCH = 256


def median_after_warmup(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def plain_autograd(X, y, epochs):
    """The yardstick, on the device X is on (gpu_check.py uses it on a GPU: synchronised at each epoch's end)."""
    torch.manual_seed(0)
    net, times = nn.Linear(784, 10).to(X.device), []
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(len(X), device=X.device)
        for i in range(0, len(X), BATCH):
            j = perm[i : i + BATCH]
            loss = F.cross_entropy(net(X[j]), y[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if X.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def plain_analytic(X, y, epochs):
    torch.manual_seed(0)
    model, loss, times = ScratchSoftmaxRegression(), CrossEntropy(), []
    sgd = ScratchSGD([model.W, model.b], lr=0.1)
    for _ in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(len(X))
        with torch.no_grad():
            for i in range(0, len(X), BATCH):
                j = perm[i : i + BATCH]
                Xb, yb = X[j], y[j]
                sgd.step([model.W, model.b], list(model.grads(Xb, loss.grad(model(Xb), yb))))
        times.append(time.perf_counter() - t)
    return times


def textbook(raw_root: Path, workers: int, epochs: int):
    import torchvision
    from torch.utils import data
    from torchvision import transforms

    ds = torchvision.datasets.FashionMNIST(str(raw_root), train=True, transform=transforms.ToTensor(), download=False)
    it = data.DataLoader(ds, BATCH, shuffle=True, num_workers=workers)
    W = torch.normal(0, 0.01, size=(784, 10), requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for Xb, yb in it:
            E = torch.exp(Xb.reshape(-1, 784) @ W + b)
            P = E / E.sum(1, keepdim=True)
            (-torch.log(P[range(len(yb)), yb])).sum().backward()
            with torch.no_grad():
                for p in (W, b):
                    p -= 0.1 * p.grad / len(yb)
                    p.grad.zero_()
        times.append(time.perf_counter() - t)
    return times


def raw_copy(tmp: Path, data_dir: str | None) -> Path:
    """torchvision wants FashionMNIST/raw/*-ubyte uncompressed."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in locate_fashion_mnist(data_dir).values():
        data = path.read_bytes()
        (raw / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return tmp


MEASURED_IMPL: dict[str, str] = {}  # "last": the impl the last measured run's params say


def ours(impl: str, epochs: int, store: str, overrides: list[str]) -> list[float]:
    from softmax_lab.jobs.train_job import train

    out = Path(tempfile.mkdtemp(prefix=f"bench-{impl}-"))
    print(f"ours: impl={impl} {' '.join(overrides)}", flush=True)
    train(compose([f"impl={impl}", "loss=ce", "optimizer.lr=0.1", f"trainer.max_epochs={epochs}",
                  f"logger.tracking_uri={store}", *overrides], out))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("fashion-mnist-softmax")
    run = client.search_runs([exp.experiment_id], order_by=["start_time DESC"], max_results=1)[0]
    MEASURED_IMPL["last"] = run.data.params["impl"]  # what really trained: the report says it per row
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, "time/epoch_s"), key=lambda m: m.step)]


def timed_process(args: list[str], store: str) -> dict:
    """Wall seconds and peak resident memory (MB) of `python src/train.py ARGS` in a fresh process.
    Run the smaller command first: ru_maxrss of children is the largest of all waited-for so far."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "src/train.py", *args], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "MLFLOW_TRACKING_URI": store})
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if r.returncode != 0:
        raise SystemExit(f"`src/train.py {' '.join(args)}` failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak / 1024, 1)}  # the largest child so far


def breakdown(run_dir: Path, wall: float) -> dict:
    """A run's phases (its phases.json), the epochs apart from the rest of fit, and the exit: what the wall clock
    holds beyond the phases (interpreter shutdown)."""
    record = json.loads((run_dir / "phases.json").read_text())
    phases = dict(record["phases_s"])
    phases["fit"] = round(phases.get("fit", 0.0) - record["epochs_s"], 3)
    phases = {"epochs themselves": record["epochs_s"], **{("fit beyond the epochs" if k == "fit" else k): v
                                                          for k, v in phases.items()}}
    phases["exit (after the job)"] = round(wall - sum(phases.values()), 3)
    return phases


def sweep_job_breakdown(sweep_dir: Path) -> dict:
    """The median of each phase over a sweep's jobs after the first (the first also pays the process's start)."""
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/phases.json"))][1:]
    keys = [k for k in jobs[0]["phases_s"]] if jobs else []
    out = {"epochs themselves": statistics.median(j["epochs_s"] for j in jobs)} if jobs else {}
    for k in keys:
        values = [j["phases_s"].get(k, 0.0) - (j["epochs_s"] if k == "fit" else 0.0) for j in jobs]
        out["fit beyond the epochs" if k == "fit" else k] = round(statistics.median(values), 3)
    return out


def waits(tmp: Path, store: str, overrides: list[str]) -> dict:
    """What a user waits for (the faster of two tries each), with the breakdown by phase of the default run and of a
    sweep job."""
    report = {}
    helps = []
    for _ in range(2):
        t = time.perf_counter()
        subprocess.run([sys.executable, "src/train.py", "--help"], cwd=ROOT, capture_output=True, check=True)
        helps.append(time.perf_counter() - t)
    report["help_s"] = round(min(helps), 2)
    runs = [timed_process([*overrides, "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp / f'wait-run-{i}'}"],
                          store)["wall_s"] for i in range(2)]
    best = min(range(2), key=lambda i: runs[i])
    report["default_run_s"] = runs[best]
    report["default_run_phases_s"] = breakdown(tmp / f"wait-run-{best}", runs[best])
    sweeps = [timed_process(["-m", "loss=ce,mse,margin,huber", "impl=scratch,nn", *overrides,
                             "trainer.enable_progress_bar=false", f"hydra.sweep.dir={tmp / f'wait-sweep-{i}'}"],
                            store)["wall_s"] for i in range(2)]
    best = min(range(2), key=lambda i: sweeps[i])
    report["sweep_8_jobs_s"] = sweeps[best]
    report["sweep_job_phases_s"] = sweep_job_breakdown(tmp / f"wait-sweep-{best}")
    return report


def print_waits(w: dict) -> None:
    print(f"\n--help {w['help_s']} s; default run {w['default_run_s']} s; 8-job sweep {w['sweep_8_jobs_s']} s")
    for title, key in (("default run", "default_run_phases_s"), ("a sweep job (median, after the first)",
                                                                 "sweep_job_phases_s")):
        print(f"  {title}:")
        for phase, seconds in w[key].items():
            print(f"    {phase:55s} {seconds:7.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6, help="epochs per measurement (the first is a warm-up)")
    ap.add_argument("--textbook-epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="no textbook pipeline, no end-to-end runs")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "epoch.json"))
    ap.add_argument("--override", action="append", default=[], help="a config override for our runs, repeatable")
    ap.add_argument("--data-dir", default=None, help="where the IDX files are (default: searched as in training)")
    ap.add_argument("--wait", action="store_true", help="only what a user waits for: --help, a default run, an 8-job "
                    "sweep, each with its breakdown by phase")
    a = ap.parse_args()
    epochs = a.epochs
    tmp = Path(tempfile.mkdtemp(prefix="softmax-lab-bench-"))
    store = f"sqlite:///{tmp / 'mlflow.db'}"

    overrides = a.override + ([f"data.data_dir={a.data_dir}"] if a.data_dir else [])
    if a.wait:
        w = waits(tmp, store, overrides)
        print_waits(w)
        out = Path(a.out).with_name("wait.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(w, indent=2))
        print(f"written: {out}")
        return
    from hydra.utils import instantiate

    dm = instantiate(compose(overrides, tmp).data)  # the plain loops get the very data our runs get
    dm.load()
    X, y = dm.splits["train"]
    speed = [*overrides, "data.batches_per_step=8"]
    pipelines = {"plain_autograd": lambda: plain_autograd(X, y, epochs),
                 "plain_analytic": lambda: plain_analytic(X, y, epochs),
                 **{f"ours_{impl}{mode}": partial(ours, impl, epochs, store, extra) for mode, extra in
                    (("", overrides), ("_speed", speed)) for impl in ("nn", "scratch", "func")}}
    rounds, trained = [], {}
    for _ in range(1 if a.quick else 3):
        rounds.append({})
        for k, run in pipelines.items():
            rounds[-1][k] = run()
            if k.startswith("ours_"):
                trained[k] = MEASURED_IMPL["last"]
    results = {k: min((r[k] for r in rounds), key=median_after_warmup) for k in pipelines}
    if not a.quick:
        root = raw_copy(tmp / "raw", a.data_dir)
        for w in (0, 2):
            results[f"textbook_w{w}"] = textbook(root, w, a.textbook_epochs)
    base = median_after_warmup(results["plain_autograd"])
    table = {k: {"median_epoch_s": round(median_after_warmup(v), 4),
                 "ratio_vs_plain": round(median_after_warmup(v) / base, 2), "epochs": len(v)}
             for k, v in results.items()}
    for k, impl in trained.items():  # the impl each row measured, read back from its MLflow run's params
        table[k]["impl"] = impl
    func_vs_nn = round(median_after_warmup(results["ours_func"]) / median_after_warmup(results["ours_nn"]), 2)
    report = {"device": "cpu", "threads": torch.get_num_threads(), "batch_size": BATCH, "overrides": a.override,
              "epoch": table, "func_vs_nn_epoch": func_vs_nn}
    if not a.quick:
        report["wait"] = waits(tmp, store, overrides)
    if not a.quick:  # smaller commands first: ru_maxrss of children is the largest so far
        for mode, extra in (("default", []), ("speed", ["data.batches_per_step=8"])):
            for impl in ("nn", "scratch"):
                report[f"e2e_run_{mode}_{impl}"] = timed_process(
                    [f"impl={impl}", *extra, f"hydra.run.dir={tmp / f'e2e-{mode}-{impl}'}"], store)
        for mode, extra in (("default", []), ("speed", ["data.batches_per_step=8"])):
            sweep = ["-m", "loss=ce,mse,margin,huber", "impl=scratch,nn", *extra, f"hydra.sweep.dir={tmp / mode}"]
            report[f"e2e_sweep_8_jobs_{mode}"] = timed_process(sweep, store)

    from search_bench import measure as measure_search  # benchmarks/search_bench.py

    report["search"] = measure_search(a.data_dir, walls=not a.quick)
    print(f"\n{'pipeline':18s} {'median epoch s':>15s} {'x plain loop':>13s}")
    for k, v in table.items():
        print(f"{k:18s} {v['median_epoch_s']:15.3f} {v['ratio_vs_plain']:13.2f}")
    print(f"impl=func's epoch / impl=nn's: {func_vs_nn} (target: <= 1.2)")
    for k, v in report.items():
        if k.startswith("e2e_"):
            print(f"{k}: {v['wall_s']} s wall, peak {v['peak_rss_mb']} MB")
    if "wait" in report:
        print_waits(report["wait"])
    for k, v in report["search"].items():
        print(f"{k}: {v}" + (" (target: < 0.3)" if k == "search_overhead_per_trial_s" else ""))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
