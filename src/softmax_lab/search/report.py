"""What a search learned, for the sweep's parent run: the optimisation history and the parameter importances as one
picture (search.png), and search.md: the study's counts, the best trial as a command to paste, the searched and
fixed keys with their importance. Written into the sweep dir; tracking/sweep.py logs both on the parent run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from softmax_lab.console import shell_word, short_value
from softmax_lab.files import write_text
from softmax_lab.pictures.charts import search_history
from softmax_lab.search.space import SearchSpace

REPORT, PICTURE = "search.md", "search.png"
PLACE = ("hparams_search=", "search.trial=")  # what makes the command a search, not part of the recipe


def best_command(space: SearchSpace, params: dict) -> str:
    """The best trial as one run, its exact values: the command line's own overrides, then the trial's values, one
    a line (a long command wraps on the page and still pastes in a POSIX shell)."""
    fixed = [o for o in space.overrides if not o.startswith(PLACE)]
    return " \\\n    ".join(["python src/train.py", *map(shell_word, [*fixed, *space.trial_overrides(params)])])


def importances(study) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched key; {} until two trials completed with different values."""
    import optuna

    try:
        return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def write_report(study, space: SearchSpace, mine: list[int], sweep_dir, storage: str) -> list[Path]:
    """search.md, search.png and optimization_results.yaml in the sweep dir: the best trial, its command, history."""
    from optuna.trial import TrialState

    sweep_dir = Path(str(sweep_dir))
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    weights = importances(study)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    head = (f"**Optuna study `{study.study_name}`** ({storage}): {len(trials)} trials, "
            f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed" + (f", {counts[TrialState.RUNNING]} running elsewhere"
                                                   if counts[TrialState.RUNNING] else "") +
            f". This search ran trial(s) {_span(mine)}.")
    lines = [head, ""]
    if complete:
        best = study.best_trial
        lines += [f"Best: trial {best.number}, val/acc_best {best.value:.4f}. Train it alone:", "",
                  "\n".join("    " + line for line in best_command(space, best.params).splitlines()), ""]
    lines += ["| key | searched over | best | importance |", "|---|---|---|---|"]
    for key, described in space.described.items():
        value = short_value(study.best_trial.params.get(key, "-")) if complete else "-"
        weight = f"{weights[key]:.2f}" if key in weights else "-"
        lines.append(f"| {key} | `{described}` | {value} | {weight} |")
    for key, (value, searched) in space.fixed.items():
        lines.append(f"| {key} | fixed by the command line (the space said `{searched}`) | {value} | - |")
    files = [write_text(sweep_dir / REPORT, "\n".join(lines) + "\n")]
    if complete:  # Hydra's Optuna sweeper's file, for scripts that read it
        files.append(write_text(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(
            {"name": "optuna", "best_params": dict(study.best_trial.params), "best_value": study.best_trial.value})))
    files.append(search_history(trial_points(trials), weights, set(mine), sweep_dir / PICTURE, study.study_name))
    return files


def _span(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    return f"{min(numbers)}-{max(numbers)}" if len(numbers) > 1 else str(numbers[0])


def trial_points(trials) -> list[tuple[int, str, float | None]]:
    """(number, state, value) of each trial: a pruned one at its last reported val/acc, a failed one without."""
    points = []
    for t in trials:
        value = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                                     if t.intermediate_values else None)
        points.append((t.number, t.state.name, value))
    return points
