"""The GPU check: `make gpu-check` (or `python benchmarks/gpu_check.py`), at most ~5 minutes on one GPU.

Each through `src/train.py` in a fresh process, as a user runs it, into a temporary MLflow store read back after:
  impl x precision   scratch, nn, func at 32-true and bf16-mixed on trainer=gpu: test accuracy, median epoch
  ddp                trainer=ddp on every visible GPU (impl=nn): the run finishes, with its accuracy and epoch
Then a plain GPU loop on the same data (nn.Linear + F.cross_entropy + torch.optim.SGD, batch 256, the data already
on the GPU): the yardstick our GPU epoch is measured against. One JSON (outputs/gpu_check.json) and a table.

`--accelerator cpu` runs the same plan on the CPU (DDP as trainer=ddp_cpu): the test suite uses it, so the script
works before the day a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from bench import median_after_warmup, plain_autograd  # noqa: E402 (benchmarks/bench.py: the same yardstick)

IMPLS = ("scratch", "nn", "func")
PRECISIONS = ("32-true", "bf16-mixed")


def train_cli(args: list[str], store: str, run_dir: Path, timeout: float) -> dict:
    """`python src/train.py ARGS` in a fresh process; what its MLflow run recorded (or why it failed)."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "src/train.py", *args, "trainer.enable_progress_bar=false",
                        f"logger.tracking_uri={store}", f"hydra.run.dir={run_dir}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = round(time.perf_counter() - t, 2)
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-3:]
        return {"ok": False, "args": args, "wall_s": wall, "error": " | ".join(tail)[-600:]}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exp = client.get_experiment_by_name("fashion-mnist-softmax")
    run = client.search_runs([exp.experiment_id], order_by=["start_time DESC"], max_results=1)[0]
    epochs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "time/epoch_s"),
                                      key=lambda m: m.step)]
    params = run.data.params
    return {"ok": run.info.status == "FINISHED", "args": args, "wall_s": wall, "status": run.info.status,
            "impl": params.get("impl"), "precision": params.get("trainer.precision", params.get("precision")),
            "test_acc": run.data.metrics.get("test/acc"), "val_acc_best": run.data.metrics.get("val/acc_best"),
            "median_epoch_s": round(median_after_warmup(epochs), 4) if epochs else None, "epochs": len(epochs)}


def device_report(accelerator: str) -> dict:
    if accelerator == "cpu":
        return {"accelerator": "cpu", "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(0)
    return {"accelerator": "gpu", "gpus": torch.cuda.device_count(), "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}",
            "torch": torch.__version__, "cuda": torch.version.cuda}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accelerator", choices=("gpu", "cpu"), default="gpu")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is a warm-up)")
    ap.add_argument("--data-dir", default=None, help="where the IDX files are (default: searched as in training)")
    ap.add_argument("--override", action="append", default=[], help="a config override for every run, repeatable")
    ap.add_argument("--impl", action="append", choices=IMPLS, help="only this impl (repeatable; default: all three)")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "gpu_check.json"))
    a = ap.parse_args()
    if a.accelerator == "gpu" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible to torch here (torch.cuda.is_available() is False). Run it where "
              "a GPU is, or `python benchmarks/gpu_check.py --accelerator cpu` to try the plan on the CPU.")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="softmax-lab-gpu-check-"))
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    common = [f"trainer.max_epochs={a.epochs}", *a.override] + ([f"data.data_dir={a.data_dir}"] if a.data_dir else [])
    single = "trainer=gpu" if a.accelerator == "gpu" else "trainer=cpu"
    report = {"device": device_report(a.accelerator), "epochs": a.epochs, "runs": {}}
    for impl in a.impl or IMPLS:
        for precision in PRECISIONS:
            key = f"{impl}/{precision}"
            print(f"gpu-check: {key} ...", flush=True)
            report["runs"][key] = train_cli([single, f"impl={impl}", f"++trainer.precision={precision}", *common],
                                            store, tmp / key.replace("/", "-"), timeout=240)
    gpus = torch.cuda.device_count() if a.accelerator == "gpu" else 2
    ddp = ["trainer=ddp", f"trainer.devices={gpus}"] if a.accelerator == "gpu" else ["trainer=ddp_cpu"]
    print(f"gpu-check: ddp on {gpus} {'GPU' if a.accelerator == 'gpu' else 'CPU process'}(s) ...", flush=True)
    report["runs"]["ddp"] = {**train_cli([*ddp, "impl=nn", *common], store, tmp / "ddp", timeout=300),
                             "processes": gpus}

    from hydra.utils import instantiate

    from softmax_lab.config import compose

    dm = instantiate(compose(common, tmp / "plain").data)  # the very data the runs trained on
    dm.load()
    X, y = dm.splits["train"]
    device = torch.device("cuda" if a.accelerator == "gpu" else "cpu")
    plain = plain_autograd(X.to(device), y.to(device), max(a.epochs, 2))
    report["plain_loop_epoch_s"] = round(median_after_warmup(plain), 4)
    for run in report["runs"].values():
        if run.get("median_epoch_s"):
            run["x_plain_loop"] = round(run["median_epoch_s"] / report["plain_loop_epoch_s"], 2)

    print(f"\n{'run':20s} {'status':9s} {'test acc':>9s} {'epoch s':>8s} {'x plain':>8s} {'wall s':>7s}")
    for key, r in report["runs"].items():
        acc = f"{r['test_acc']:.4f}" if r.get("test_acc") is not None else "-"
        ep = f"{r['median_epoch_s']:.3f}" if r.get("median_epoch_s") else "-"
        print(f"{key:20s} {r.get('status', 'FAILED'):9s} {acc:>9s} {ep:>8s} {r.get('x_plain_loop', '-'):>8} "
              f"{r['wall_s']:7.1f}")
        if not r["ok"]:
            print(f"  {r.get('error', '')}")
    print(f"plain loop on the {device.type}: {report['plain_loop_epoch_s']:.3f} s an epoch")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    failed = [k for k, r in report["runs"].items() if not r["ok"]]
    print(f"written: {out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
