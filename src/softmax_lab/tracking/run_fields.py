"""What a run records besides its metrics: params as a person compares them, and MLflow's own User and Source."""

from __future__ import annotations

import getpass
import math
import os
import subprocess

from omegaconf import DictConfig, OmegaConf

from softmax_lab.config import PROJECT_ROOT

MAX_PARAM_VALUE = 6000  # MLflow 3's limit on a param value
MAX_TAG_VALUE = 5000
# Not settings to compare: paths, display switches, what the code builds itself (tags or config.yaml have them)
NOT_PARAMS = {"_target_", "default_lr", "data_dir", "download", "shuffle_seed", "default_root_dir",
              "enable_progress_bar", "enable_model_summary", "enable_checkpointing", "callbacks", "plugins", "logger"}


def readable(value: float) -> float:
    """A number as people read it: 7 significant digits, what a float32 holds (a float32 tensor's .item(),
    0.843999981880188, is 0.844; a float32 sum divided in float64, 1.0755642578125, is 1.075564)."""
    value = float(value)
    return float(f"{value:.7g}") if math.isfinite(value) else value


def git_state() -> dict[str, str]:
    def git(*args):
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"mlflow.source.git.commit": head.stdout.strip(), "git_dirty": str(dirty).lower()}
    except (OSError, subprocess.SubprocessError):
        return {}


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's own fields: User, Source (the entry point) and its git commit."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = os.environ.get("USER", "unknown")
    return {"mlflow.user": user, "mlflow.source.name": entry_point, "mlflow.source.type": "LOCAL", **git_state()}


def _short(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def run_params(cfg: DictConfig, loss_name: str, choices: dict | None = None) -> dict[str, str]:
    """Each setting once, under the key a user types (`optimizer.lr`, `data.batch_size`): the loss and the
    optimizer by name and options, the data, model and trainer settings and the seed."""
    c = OmegaConf.to_container(cfg, resolve=True)
    choices = choices or {}
    params = {"loss": loss_name, "impl": c["model"]["impl"],
              "optimizer": choices.get("optimizer") or _short(c["optimizer"]["_target_"]).lower(),
              "seed": c["seed"], "model.init_std": c["model"].get("init_std")}
    for group in ("loss", "optimizer", "data", "trainer"):
        for k, v in c.get(group, {}).items():
            if k in NOT_PARAMS:
                continue
            if isinstance(v, dict):  # e.g. trainer.strategy: its class, by name
                v = _short(v.get("_target_", "")) or v
            params[f"{group}.{k}"] = v
    if choices.get("experiment"):
        params["experiment"] = choices["experiment"]
    return {k: str(v)[:MAX_PARAM_VALUE] for k, v in params.items()}
