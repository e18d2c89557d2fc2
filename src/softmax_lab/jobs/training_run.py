"""One training run's pieces, built and checked before any data is read or any MLflow run exists (TrainingRun),
and what the run says about itself: its tags and, when it is stopped, how far it got and how to resume it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from softmax_lab.config import instantiate_checked, validate_config
from softmax_lab.console import hydra_override, pasteable
from softmax_lab.errors import ConfigError
from softmax_lab.jobs.naming import check_run_dir, hydra_context, run_name
from softmax_lab.jobs.phases import Phases
from softmax_lab.jobs.resume import Resume
from softmax_lab.maths.losses import name_of
from softmax_lab.search.pruning import TrialPruning
from softmax_lab.tracking.run import NoTracking
from softmax_lab.tracking.run_fields import source_tags
from softmax_lab.trainer.build import make_callbacks, make_trainer
from softmax_lab.trainer.epoch_record import EpochRecorder
from softmax_lab.trainer.flags import check_trainer, plan
from softmax_lab.trainer.processes import launched_as_rank_zero


@dataclass
class TrainingRun:
    """The pieces of one training run."""

    cfg: DictConfig
    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    trainer: pl.Trainer
    name: str
    loss_name: str
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    tracker: object = field(default_factory=NoTracking)
    phases: Phases = field(default_factory=Phases)  # where the run's seconds go (phases.json, make bench)
    ctx: dict = field(default_factory=dict)  # the Hydra job's overrides, choices and place in a sweep
    resume: Resume | None = None  # ckpt_path=: the interrupted run this one continues

    @property
    def leads(self) -> bool:
        """Whether this process records the run: global rank 0 (the only writer of the run dir and the MLflow
        run). Until fit has set up the processes the launcher's environment says so; from then on the Trainer."""
        return self.trainer.is_global_zero if self.trainer.state.fn is not None else launched_as_rank_zero()

    @property
    def recorder(self) -> EpochRecorder:
        return next(c for c in self.trainer.callbacks if isinstance(c, EpochRecorder))

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def resume_override(self) -> str:
        return hydra_override("ckpt_path", self.last_checkpoint)

    @property
    def resume_command(self) -> str:
        """The command that resumes this run from its last checkpoint, pasteable into a shell."""
        return pasteable("src/train.py", [*[o for o in self.overrides if not o.startswith("ckpt_path=")],
                                          self.resume_override])

    def resume_hint(self) -> str:
        """A killed run's description: how far it got and the command that continues it."""
        epochs, done = epoch_limit(self), len(self.recorder.history)
        stopped = f"stopped after epoch {done}" + (f" of {epochs}" if epochs and epochs > 0 else "") + \
            f" (step {self.trainer.global_step})"
        if not self.last_checkpoint.exists():
            return f"{stopped}, before its first checkpoint: nothing to resume from. Run the same command again."
        return f"{stopped}. What it measured until then is kept. Resume it from its last checkpoint: " \
               f"`{self.resume_command}`"


def epoch_limit(run: TrainingRun) -> int:
    """trainer.max_epochs, or Lightning's own default when `~trainer.max_epochs` deleted it (set at fit: 1000 epochs,
    or none when max_steps bounds the run)."""
    limit = run.cfg.trainer.get("max_epochs", run.trainer.max_epochs)
    return limit if limit is not None else 1000 if run.cfg.trainer.get("max_steps", -1) == -1 else -1


def build_run(cfg: DictConfig, overrides: list[str] = (), phases: Phases | None = None) -> TrainingRun:
    """What `cfg` trains, built and checked, before any data is read or any run exists: the data module and the
    module (seeded), the Trainer with the flags the module honours by hand taken out (trainer/flags.py), a
    strategy that cannot train the module refused. ConfigError for anything that cannot be honoured."""
    validate_config(cfg)
    flags = plan(cfg.trainer, cfg.model.impl, cfg.data.batches_per_step, cfg.get("callbacks") or {})
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate_checked(cfg.data, **flags.data, _convert_="all")  # plain values: into checkpoints
    module = instantiate_checked(cfg.model, num_inputs=datamodule.num_inputs, num_classes=datamodule.num_classes,
                                 class_names=datamodule.class_names, **flags.module, _recursive_=False,
                                 _convert_="all")
    trainer = make_trainer(cfg.trainer, flags.trainer, make_callbacks(cfg))
    check_trainer(trainer, flags, cfg.model.impl)
    loss_name = name_of(cfg.loss._target_)
    return TrainingRun(cfg, module, datamodule, trainer, run_name(loss_name, cfg.model.impl, list(overrides)),
                       loss_name, Path(cfg.paths.output_dir), list(overrides), phases=phases or Phases())


def checked_run(cfg: DictConfig, overrides: list[str]) -> TrainingRun:
    """build_run inside the Hydra job (or outside one, with `overrides`), continuing a checkpoint's run where
    ckpt_path= names one, with its tracker on the process that records. Nothing read, nothing recorded yet."""
    check_run_dir(cfg)
    ctx = hydra_context() or {"overrides": overrides}
    resume = Resume.read(cfg.ckpt_path) if cfg.ckpt_path else None
    if resume is not None and resume.run_dir is not None:  # continue in the interrupted run's own dir
        OmegaConf.update(cfg, "paths.output_dir", str(resume.run_dir))
    # the clock from the process's start; a sweep's later jobs from their own
    run = build_run(cfg, ctx.get("overrides", []), Phases(since_process_start=ctx.get("job_num", 0) == 0))
    run.ctx, run.resume = ctx, resume
    if resume is not None:
        resume.check(run.module.hparams, run.datamodule.hparams)
    on_cluster = ctx.get("launcher", "").startswith("hydra_plugins.hydra_submitit")
    if "job_num" in ctx and run.trainer.world_size > 1 and not on_cluster:
        raise ConfigError(f"trainer: {run.trainer.world_size} DDP processes inside a local Hydra multirun would each "
                          "re-run the whole sweep (Lightning re-launches the script). Fix: run each job on its own, or "
                          "hydra/launcher=submitit_slurm for DDP jobs on a cluster.")
    # Lightning's fast_dev_run is a smoke test: no logger run and no checkpoints, as Lightning documents
    if run.leads and not run.trainer.fast_dev_run:
        run.tracker = instantiate(cfg.logger)
    return run


def run_tags(run: TrainingRun) -> dict[str, str]:
    """What the run is (kind, loss, impl, overrides, data), where it is in a sweep or search, what it resumed."""
    cfg, ctx = run.cfg, run.ctx
    tags = {"kind": "train", "overrides": " ".join(run.overrides) or "(defaults)", "run_dir": str(run.run_dir),
            "loss": run.loss_name,
            "impl": cfg.model.impl, "data_dir": str(run.datamodule.located_dir), **source_tags("src/train.py")}
    if "job_num" in ctx:
        tags.update(sweep_dir=ctx["sweep_dir"], job_num=ctx["job_num"])
    if OmegaConf.select(cfg, "search.trial") is not None:  # a trial of an Optuna search (hparams_search=optuna)
        study = next((c.study_name for c in run.trainer.callbacks if isinstance(c, TrialPruning)), "")
        tags.update(optuna_trial=cfg.search.trial, optuna_study=study)
    if run.resume is not None:
        tags["resumed_from"] = str(run.resume.path)
    return tags
