"""Where a job runs in Hydra (overrides, choices, sweep position) and the name its MLflow run gets."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from softmax_lab.config import TRIAL_KEY
from softmax_lab.console import short_overrides
from softmax_lab.errors import ConfigError
from softmax_lab.tracking.sweep_jobs import SweepLink

# Overrides that say where or how things run, not what is trained: left out of run names.
# A deletion (`~key`) is a change like any other and is named, unless it deletes a place key.
PLACE_KEYS = ("hydra.", "paths.", "logger.", "ckpt_path", "data.data_dir", "data.download",
              "trainer.accelerator", "trainer.devices", "trainer.enable_progress_bar", "callbacks.")


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_context() -> dict:
    """Overrides, choices and the sweep position of the current Hydra job ({} outside Hydra)."""
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    ctx = {"overrides": list(hc.overrides.task), "choices": dict(hc.runtime.choices)}
    if hc.mode == RunMode.MULTIRUN:  # reading job.num in a single run raises
        ctx.update(job_num=hc.job.num, sweep_dir=hc.sweep.dir, launcher=str(hc.launcher.get("_target_", "")))
    return ctx


def check_run_dir(cfg: DictConfig) -> None:
    """A config composed with Hydra's own compose API, outside a Hydra app, has no run dir: one line saying how to
    give it one, instead of OmegaConf's `HydraConfig was not set`."""
    if not HydraConfig.initialized() and str(OmegaConf.to_container(cfg.paths)["output_dir"]).startswith("${hydra:"):
        raise ConfigError("paths.output_dir is Hydra's run dir (${hydra:runtime.output_dir}), and no Hydra app is "
                          "running. Fix: softmax_lab.jobs.api.train(...) / evaluate(...), which give each run its own, "
                          "or compose with the override paths.output_dir=<a folder>.")


TRIAL = TRIAL_KEY + "="  # an Optuna search's trial number: the name starts with it


def run_name(loss_name: str, impl: str, overrides: list[str]) -> str:
    """'loss=huber impl=scratch optimizer.lr=0.05': the loss and impl always, then what else was changed (in a
    sweep: what the sweep varies), values to 4 significant digits; a search's trial: 'trial 3: loss=...'."""
    head = [f"loss={loss_name}", f"impl={impl}"]
    trial = next((o[len(TRIAL):] for o in overrides if o.startswith(TRIAL)), None)
    rest = [o for o in overrides if not o.lstrip("~+").startswith(("loss=", "impl=", TRIAL, *PLACE_KEYS))]
    swept = SweepLink.of_this_job().swept_keys
    if swept is not None:
        rest = [o for o in rest if o.split("=", 1)[0].lstrip("+~") in swept]
    name = short_overrides(" ".join(head + rest))
    return f"trial {trial}: {name}" if trial is not None else name
