"""The study on its storage: opened (created, or continued when the same name is there), checked before any trial,
a trial found by its number from any process, and what a finished trial tells it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from softmax_lab.config import launch_relative
from softmax_lab.console import redact
from softmax_lab.errors import ConfigError
from softmax_lab.files import creation_lock

PRUNED_AT = "pruned_at_epoch"  # the trial's user attribute a pruned trial sets (search/pruning.py)
INTERRUPTED = "interrupted"  # a trial failed because its search was stopped


def shown(storage: str | None) -> str:
    """The study's storage as printed: without its password, or 'in memory'."""
    return redact(storage) if storage else "in memory"


def sqlite_file(storage: str | None) -> Path | None:
    if storage and storage.startswith("sqlite:///") and ":memory:" not in storage:
        return Path(storage.removeprefix("sqlite:///"))
    return None


@dataclass
class Study:
    """An Optuna study with the storage it lives in, so trials are found by number through the storage's API."""

    study: object
    storage: object
    study_id: int

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def record(self, number: int):
        """Trial `number` as stored (its state, values and user attributes)."""
        return self.storage.get_trial(self.trial_id(number))

    def live_trial(self, number: int):
        """Trial `number` as a Trial that reports intermediate values and asks the study's pruner."""
        import optuna

        return optuna.trial.Trial(self.study, self.trial_id(number))

    def with_sampler(self, sampler) -> Study:
        """The same study, asking `sampler` from now on."""
        import optuna

        study = optuna.load_study(study_name=self.study.study_name, storage=self.storage, sampler=sampler,
                                  pruner=self.study.pruner)
        return Study(study, self.storage, self.study_id)

    def tell_outcome(self, trial, value) -> str:
        """Tell how a launched trial ended: PRUNED when it stopped itself (its user attribute), FAIL without a value
        (the job failed: NaN), COMPLETE otherwise. Returns the state's name."""
        from optuna.trial import TrialState

        if PRUNED_AT in self.record(trial.number).user_attrs:
            self.study.tell(trial, state=TrialState.PRUNED)
            return "PRUNED"
        if not isinstance(value, int | float) or math.isnan(value):
            self.study.tell(trial, state=TrialState.FAIL)
            return "FAIL"
        self.study.tell(trial, float(value))
        return "COMPLETE"


def open_study(storage_url: str | None, name: str, direction: str = "maximize", sampler=None,
               pruner: DictConfig | None = None) -> Study:
    """The study, created or continued; ConfigError naming hydra.sweeper.storage / direction when it cannot be opened
    or was made for the other direction."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints its own lines
    if str(direction).lower() not in ("maximize", "minimize"):
        raise ConfigError(f"hydra.sweeper.direction={direction} is not allowed: expected maximize (val/acc_best, "
                          "the trials' result) or minimize.")
    try:
        with creation_lock(launch_relative(storage_url), sqlite_file(storage_url)):
            storage = optuna.storages.get_storage(launch_relative(storage_url))
            study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                        sampler=sampler or optuna.samplers.RandomSampler(),
                                        pruner=instantiate(pruner) if pruner is not None else None)
    except (SQLAlchemyError, OSError, ValueError, ImportError) as e:
        raise ConfigError(f"hydra.sweeper.storage={shown(storage_url)}: the study {name!r} cannot be opened "
                          f"({str(e).splitlines()[0][:300]}). Fix: give a reachable database URL, e.g. "
                          "sqlite:///outputs/optuna/search.db or postgresql://user@host/db.") from e
    if study.direction.name.lower() != str(direction).lower():
        raise ConfigError(f"hydra.sweeper.direction={direction}: the study {name!r} in {shown(storage_url)} "
                          f"was made to {study.direction.name.lower()}. Fix: use its direction, or another "
                          "hydra.sweeper.study_name for a new study.")
    return Study(study, storage, storage.get_study_id_from_name(name))


def check_pruning(storage_url: str | None, pruner: DictConfig | None) -> None:
    if storage_url is None and pruner is not None and not str(pruner.get("_target_", "")).endswith("NopPruner"):
        raise ConfigError("hydra.sweeper.storage=null keeps the study in this process's memory: trials cannot "
                          "report their epochs to it for pruning, and a stopped search cannot continue. Fix: keep "
                          "the default storage (a sqlite file), give one, or hydra/sweeper/pruner=none.")


def load_study(storage_url: str, name: str, pruner=None) -> Study:
    """A study a search made, from inside one of its trials (another process): to report to and ask its pruner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.get_storage(launch_relative(storage_url))  # the trial may run in its job dir
    study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    return Study(study, storage, storage.get_study_id_from_name(name))
