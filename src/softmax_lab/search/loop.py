"""A search's loop on Optuna's ask-and-tell API: ask n_jobs trials, sample them, launch them as Hydra jobs with the
launcher the user chose, tell the study how each ended; n_trials more trials per command, however many the study
holds already (another command with the same study name and storage continues it; several at once share it).

Each process seeds its sampler with `seed + the number of its first trial`: a search alone is reproducible, and
workers sharing a study (or one continuing it) do not propose the same trials. A stopped search tells the study
its trials FAILED (their MLflow runs are KILLED by the jobs themselves) before it exits."""

from __future__ import annotations

import logging
import math

from hydra.utils import instantiate
from omegaconf import DictConfig

from softmax_lab.config import TRIAL_KEY
from softmax_lab.errors import ConfigError, RunInterrupted
from softmax_lab.search.report import write_report
from softmax_lab.search.space import SearchSpace, search_space
from softmax_lab.search.study import INTERRUPTED, Study, check_pruning, open_study, shown
from softmax_lab.signals import INTERRUPTS

log = logging.getLogger("softmax_lab.search")


def count(sweeper: DictConfig, key: str) -> int:
    """hydra.sweeper.n_trials / n_jobs: a whole number of at least 1, or ConfigError."""
    value = sweeper.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"hydra.sweeper.{key}={value} is not allowed: expected a whole number of at least 1. Fix: "
                          f"hydra.sweeper.{key}=" + ("20 (trials this command adds)" if key == "n_trials" else
                                                     "1 (trials launched at once)") + ".")
    return value


def check_same_space(space: SearchSpace, study: Study, name: str) -> None:
    """A continued study samples each key from the distribution its earlier trials had (Optuna refuses another one
    mid-search, in a traceback): a changed space is ConfigError here."""
    from optuna.distributions import check_distribution_compatibility

    earlier = {}
    for t in study.study.get_trials(deepcopy=False):
        earlier.update(t.distributions)
    for key, new in space.distributions.items():
        if key not in earlier:
            continue
        try:
            check_distribution_compatibility(earlier[key], new)
        except ValueError as e:
            raise ConfigError(f"search space: {key}={space.described[key]} differs from what the study {name!r} "
                              f"searched before ({earlier[key]}; {e}). Fix: search the same space to continue it, "
                              "or start a new study with hydra.sweeper.study_name=<another>.") from e


def plan(sweeper: DictConfig, arguments: list[str]) -> tuple[SearchSpace, Study]:
    """The space and the opened study, checked: ConfigError before any trial (and before the sweep's MLflow run)."""
    count(sweeper, "n_trials")
    count(sweeper, "n_jobs")
    space = search_space(sweeper.get("params"), [a for a in arguments if not a.startswith(TRIAL_KEY + "=")])
    if not space.distributions:
        raise ConfigError("hparams_search=optuna has nothing to search: hydra.sweeper.params is empty and the "
                          "command line sweeps nothing. Fix: give hydra.sweeper.params, or key=choice(a,b) on the "
                          "command line.")
    check_pruning(sweeper.storage, sweeper.pruner)
    study = open_study(sweeper.storage, sweeper.study_name, str(sweeper.direction), pruner=sweeper.pruner)
    check_same_space(space, study, sweeper.study_name)
    return space, study


def seeded(sampler: DictConfig | None, first_trial: int):
    """The sampler, its seed moved on by the trials already in the study (a continued search samples new points)."""
    if sampler is None:
        return None
    if sampler.get("seed") is None:
        return instantiate(sampler)
    return instantiate(sampler, seed=int(sampler.seed) + first_trial)


def suggest(trial, space: SearchSpace) -> dict:
    """Sample the trial's value for every searched key (Optuna's public suggest API, by distribution type)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params = {}
    for key, d in space.distributions.items():
        if isinstance(d, CategoricalDistribution):
            params[key] = trial.suggest_categorical(key, d.choices)
        elif isinstance(d, IntDistribution):
            params[key] = trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
        else:
            params[key] = trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    return params


def run_search(launcher, config: DictConfig, arguments: list[str]) -> None:
    """Ask the study for trials, launch them n_jobs at a time, tell it each result; then the search's report."""
    sweeper = config.hydra.sweeper
    space, study = plan(sweeper, arguments)
    already = len(study.study.get_trials(deepcopy=False))
    print(f"Optuna study {sweeper.study_name!r} ({shown(sweeper.storage)}): {already} trial(s) so far; this "
          f"search adds {sweeper.n_trials}, {sweeper.n_jobs} at a time", flush=True)
    for key, (value, searched) in space.fixed.items():
        print(f"  {key}={value} from the command line: fixed, not searched over {searched}", flush=True)
    mine: list[int] = []
    with INTERRUPTS.installed():
        try:
            _trials(launcher, sweeper, space, study, mine)
        except (RunInterrupted, KeyboardInterrupt, SystemExit) as e:
            _stopped(study, mine, e)
    write_report(study.study, space, mine, config.hydra.sweep.dir, shown(sweeper.storage))


def numbered_runs(numbers: list[int]) -> list[tuple[int, int]]:
    """Consecutive trial numbers as (first, count): each is launched at once with Hydra's job number = the trial's
    number, so job dirs are the trials' and never collide with another worker's or an earlier search's."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][0] + runs[-1][1] == n:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((n, 1))
    return runs


def _trials(launcher, sweeper, space: SearchSpace, study: Study, mine: list[int]) -> None:
    to_go = int(sweeper.n_trials)
    while to_go > 0:
        trials = [study.study.ask() for _ in range(min(int(sweeper.n_jobs), to_go))]
        if not mine:  # this process's sampler, seeded from its first trial's number
            study = study.with_sampler(seeded(sweeper.sampler, trials[0].number))
            trials = [study.live_trial(t.number) for t in trials]
        mine += [t.number for t in trials]
        overrides = [[f"{TRIAL_KEY}={t.number}", *space.trial_overrides(suggest(t, space)), *space.overrides]
                     for t in trials]
        returns = []
        for start, count in numbered_runs([t.number for t in trials]):  # job number = trial number
            returns += launcher.launch(overrides[len(returns):len(returns) + count], initial_job_idx=start)
        for t, ret in zip(trials, returns):
            try:
                value = ret.return_value
            except Exception:  # noqa: BLE001 - the job failed; its own record says why
                value = math.nan
            state = study.tell_outcome(t, value)
            print(f"trial {t.number}: {state}" + (f", val/acc_best {value:.4f}" if state == "COMPLETE" else ""),
                  flush=True)
        to_go -= len(trials)


def _stopped(study: Study, mine: list[int], e: BaseException) -> None:
    """Trials this process started and did not finish become FAIL in the study; then the process exits (the sweeper
    ends the sweep's parent run KILLED)."""
    from optuna.trial import TrialState

    cut = []
    for number in mine:
        if study.record(number).state == TrialState.RUNNING:
            trial = study.live_trial(number)
            trial.set_user_attr(INTERRUPTED, True)
            study.study.tell(trial, state=TrialState.FAIL)
            cut.append(number)
    log.error("search stopped: trial(s) %s recorded FAIL in the study; run the same command to continue it", cut)
    if isinstance(e, SystemExit):
        raise e
    raise SystemExit(e.exit_code if isinstance(e, RunInterrupted) else 130) from e
