"""What a search learned, for the sweep's parent run: the optimisation history and the parameter importances as one
picture (search.png), and search.md: the study's counts, the best trial as a command to paste, the searched and
fixed keys with their importance. Written into the sweep dir; tracking/sweep.py logs both on the parent run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from softmax_lab.files import write_text
from softmax_lab.search.space import SearchSpace

REPORT, PICTURE = "search.md", "search.png"
PLACE = ("hparams_search=", "search.trial=")  # what makes the command a search, not part of the recipe


def best_command(space: SearchSpace, params: dict) -> str:
    """The best trial as one run: the command line's own overrides, then the trial's values."""
    fixed = [o for o in space.overrides if not o.startswith(PLACE)]
    return " ".join(["python src/train.py", *fixed, *space.trial_overrides(params)])


def importances(study) -> dict[str, float]:
    """Optuna's fANOVA importance of each searched key; {} until two trials completed with different values."""
    import optuna

    try:
        return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError):
        return {}


def write_report(study, space: SearchSpace, mine: list[int], sweep_dir, storage: str) -> list[Path]:
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
                  f"    {best_command(space, best.params)}", ""]
    lines += ["| key | searched over | best | importance |", "|---|---|---|---|"]
    for key, described in space.described.items():
        value = study.best_trial.params.get(key, "-") if complete else "-"
        weight = f"{weights[key]:.2f}" if key in weights else "-"
        lines.append(f"| {key} | `{described}` | {value} | {weight} |")
    for key, (value, searched) in space.fixed.items():
        lines.append(f"| {key} | fixed by the command line (the space said `{searched}`) | {value} | - |")
    files = [write_text(sweep_dir / REPORT, "\n".join(lines) + "\n")]
    if complete:  # Hydra's Optuna sweeper's file, for scripts that read it
        files.append(write_text(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(
            {"name": "optuna", "best_params": dict(study.best_trial.params), "best_value": study.best_trial.value})))
    files.append(history_picture(trials, weights, set(mine), sweep_dir / PICTURE, study.study_name))
    return files


def _span(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    return f"{min(numbers)}-{max(numbers)}" if len(numbers) > 1 else str(numbers[0])


def history_picture(trials, weights: dict, mine: set[int], path: Path, name: str) -> Path:
    """Left: each trial's val/acc_best by trial number (pruned ones at their last report), the best so far as a
    line, this search's trials filled. Right: the importance of each searched key."""
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    from softmax_lab.pictures.canvas import plt, save

    fig, (ax, imp) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    for state, marker, color, label in ((TrialState.COMPLETE, "o", "C0", "complete"),
                                        (TrialState.PRUNED, "x", "C1", "pruned (last report)")):
        shown = [t for t in trials if t.state == state and (t.value is not None or t.intermediate_values)]
        values = [t.value if t.value is not None else t.intermediate_values[max(t.intermediate_values)]
                  for t in shown]
        faces = [color if t.number in mine else "none" for t in shown]
        if shown and marker == "o":
            ax.scatter([t.number for t in shown], values, marker=marker, c=faces, edgecolors=color, label=label,
                       zorder=3)
        elif shown:  # a cross has no face
            ax.scatter([t.number for t in shown], values, marker=marker, c=color, label=label, zorder=3)
    done = sorted((t.number, t.value) for t in trials if t.state == TrialState.COMPLETE)
    if done:
        best, xs, ys = -float("inf"), [], []
        for number, value in done:
            best = max(best, value)
            xs.append(number)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C2", label=f"best so far ({best:.4f})")
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    for i, number in enumerate(failed):
        ax.axvline(number, color="C3", alpha=0.3, linewidth=1, label="failed" if i == 0 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (filled: this search)")
    ax.set_ylabel("val/acc_best")
    ax.set_title(f"Optimisation history: {name}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if weights:
        keys = list(weights)[::-1]
        bars = imp.barh(keys, [weights[k] for k in keys], color="C0")
        imp.bar_label(bars, [f"{weights[k]:.2f}" for k in keys], padding=3, fontsize=8)
        imp.set_xlim(0, 1)
        imp.set_xlabel("importance (fANOVA, share of the variance)")
    else:
        imp.text(0.5, 0.5, "importances need two complete\ntrials with different values", ha="center",
                 va="center", transform=imp.transAxes)
        imp.set_xticks([])
        imp.set_yticks([])
    imp.set_title("Parameter importance", fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.14, top=0.9, wspace=0.55)
    return save(fig, path)
