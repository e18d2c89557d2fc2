"""Optuna searches (hparams_search=optuna): the search space read as Hydra's sweep syntax, pruning from inside a
trial, and through the real CLI a study that continues, is shared by two processes, stops cleanly and reports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from conftest import QUIET, ROOT, mlflow_runs, run_cli
from softmax_lab.errors import ConfigError
from softmax_lab.search.pruning import TrialPruning
from softmax_lab.search.space import search_space
from softmax_lab.search.study import PRUNED_AT, open_study

PARAMS = {"optimizer.lr": "tag(log, interval(0.001, 1.0))", "optimizer.weight_decay": "interval(0.0, 0.001)",
          "data.batch_size": "choice(64, 128, 256, 512)", "data.normalize": "choice(true, false)",
          "trainer.max_epochs": "range(5, 30, step=5)"}


def test_the_search_space_is_hydras_sweep_syntax_and_the_command_line_fixes_a_key():
    space = search_space(PARAMS, ["trainer.max_epochs=1", "loss=ce,mse", "+trainer.limit_train_batches=20"])
    d = space.distributions
    assert d["optimizer.lr"] == FloatDistribution(0.001, 1.0, log=True)
    assert d["optimizer.weight_decay"] == FloatDistribution(0.0, 0.001)
    assert d["data.batch_size"] == CategoricalDistribution([64, 128, 256, 512])
    assert d["loss"] == CategoricalDistribution(["ce", "mse"])  # a command-line sweep joins the space
    assert "trainer.max_epochs" not in d and space.fixed == {"trainer.max_epochs": ("1", "range(5, 30, step=5)")}
    assert space.overrides == ["trainer.max_epochs=1", "+trainer.limit_train_batches=20"]
    assert search_space({"trainer.max_epochs": "range(5, 30, step=5)"}, []).distributions["trainer.max_epochs"] == \
        IntDistribution(5, 25, step=5)  # Hydra's range ends before its stop
    # every value a trial gets is written so that Hydra's own parser reads the same value back
    params = {"optimizer.lr": 1.2345678901234e-05, "optimizer.weight_decay": 0.0, "data.batch_size": 128,
              "data.normalize": False, "loss": "mse"}
    parsed = OverridesParser.create().parse_overrides(space.trial_overrides(params))
    assert {o.key_or_group: o.value() for o in parsed} == params
    quoted = search_space({"x": "choice('a b', c)"}, [])
    assert OverridesParser.create().parse_overrides(quoted.trial_overrides({"x": "a b"}))[0].value() == "a b"


def test_job_numbers_are_trial_numbers_launched_in_consecutive_runs():
    from softmax_lab.search.loop import numbered_runs

    assert numbered_runs([3, 4, 5]) == [(3, 3)]
    assert numbered_runs([3, 5, 6, 9]) == [(3, 1), (5, 2), (9, 1)]  # another worker took 4, 7 and 8


@pytest.mark.parametrize("params, words", [({"optimizer.lr": "tag(log, interval(0.0, 1.0))"}, "above 0"),
                                           ({}, "nothing to search")])
def test_a_space_optuna_cannot_search_is_refused_in_one_line(params, words):
    from omegaconf import OmegaConf

    from softmax_lab.search.loop import plan

    sweeper = OmegaConf.create({"params": params, "storage": None, "pruner": None, "study_name": "s",
                                "direction": "maximize", "n_trials": 2, "n_jobs": 1})
    with pytest.raises(ConfigError, match=words):
        plan(sweeper, [])


@pytest.mark.parametrize("key, value", [("n_trials", -1), ("n_trials", 0), ("n_trials", "abc"), ("n_trials", 2.5),
                                        ("n_jobs", 0), ("n_jobs", True)])
def test_trial_counts_a_search_cannot_run_are_refused_in_one_line(key, value):
    from omegaconf import OmegaConf

    from softmax_lab.search.loop import plan

    sweeper = OmegaConf.create({"params": {"optimizer.lr": "interval(0.01, 0.1)"}, "storage": None, "pruner": None,
                                "study_name": "s", "direction": "maximize", "n_trials": 2, "n_jobs": 1, key: value})
    with pytest.raises(ConfigError, match=f"hydra.sweeper.{key}={value} is not allowed: expected a whole number"):
        plan(sweeper, [])


def test_a_descending_range_searches_the_same_values_as_hydra_sweeps_them():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from optuna.distributions import IntDistribution

    from softmax_lab.search.space import search_space

    space = search_space({"trainer.max_epochs": "range(30,5,step=-5)"}, [])
    assert space.distributions["trainer.max_epochs"] == IntDistribution(10, 30, step=5)
    hydra_values = list(OverridesParser.create().parse_override("k=range(30,5,step=-5)").sweep_iterator())
    assert sorted(hydra_values) == list(range(10, 31, 5))


def test_a_continued_study_whose_space_changed_is_refused_in_one_line(tmp_path):
    from omegaconf import OmegaConf

    from softmax_lab.search.loop import plan, suggest

    def sweeper(batch_sizes):
        return OmegaConf.create({"params": {"data.batch_size": f"choice({batch_sizes})"}, "pruner": None,
                                 "storage": f"sqlite:///{tmp_path / 'study.db'}", "study_name": "s",
                                 "direction": "maximize", "n_trials": 1, "n_jobs": 1})

    space, study = plan(sweeper("64, 128, 256"), [])
    trial = study.study.ask()
    suggest(trial, space)
    study.study.tell(trial, 0.8)
    assert plan(sweeper("64, 128, 256"), [])[1].study.trials[0].value == 0.8  # the same space continues
    with pytest.raises(ConfigError, match=r"data.batch_size=choice\(32, 64\) differs from what the study 's' "
                                          r"searched before .*Fix: search the same space"):
        plan(sweeper("32, 64"), [])


def test_a_study_for_the_other_direction_or_pruning_in_memory_is_refused(tmp_path):
    from omegaconf import OmegaConf

    from softmax_lab.search.study import check_pruning

    storage = f"sqlite:///{tmp_path / 'deep' / 'optuna.db'}"  # the folder is made
    open_study(storage, "s", "maximize")
    with pytest.raises(ConfigError, match="made to maximize"):
        open_study(storage, "s", "minimize")
    with pytest.raises(ConfigError, match="direction=sideways is not allowed: expected maximize"):
        open_study(storage, "s", "sideways")
    with pytest.raises(ConfigError, match="pruning"):
        check_pruning(None, OmegaConf.create({"_target_": "optuna.pruners.MedianPruner"}))
    check_pruning(None, OmegaConf.create({"_target_": "optuna.pruners.NopPruner"}))


@pytest.mark.parametrize("pruner, epochs, pruned_at, mode", [
    (optuna.pruners.ThresholdPruner(lower=1.1), 3, 1, "data.batches_per_step=1"),
    (optuna.pruners.ThresholdPruner(lower=1.1), 3, 1, "data.batches_per_step=2"),  # the speed mode
    (optuna.pruners.NopPruner(), 3, None, "data.batches_per_step=1"),
    (optuna.pruners.ThresholdPruner(lower=1.1), 1, None, "data.batches_per_step=1")])
def test_a_trial_reports_each_epoch_and_stops_when_its_pruner_says(make_cfg, tmp_path, pruner, epochs, pruned_at,
                                                                   mode):
    """ThresholdPruner(lower=1.1) prunes any accuracy; never at the last epoch, where stopping saves nothing. The
    reports are the epochs' val/acc, in the speed mode too."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(storage, "s").study
    number = study.ask().number
    cfg = make_cfg(f"trainer.max_epochs={epochs}", mode)
    run = fit_only_with(cfg, TrialPruning(storage, "s", number, pruner))
    record = study.get_trials()[number]
    assert run.trainer.current_epoch == (pruned_at or epochs)  # epochs run
    assert sorted(record.intermediate_values) == list(range(pruned_at or epochs))  # one report per validation
    history = [h["val/acc"] for h in run.recorder.history]
    assert [record.intermediate_values[i] for i in sorted(record.intermediate_values)] == pytest.approx(history)
    assert record.user_attrs.get(PRUNED_AT) == pruned_at


def test_a_study_in_memory_has_no_trial_to_report_to_and_trains_on(make_cfg):
    """hydra.sweeper.storage=null with hydra/sweeper/pruner=none: the trial's process cannot see the study."""
    run = fit_only_with(make_cfg("trainer.max_epochs=2"), TrialPruning(None, "s", 0, optuna.pruners.NopPruner()))
    assert run.trainer.current_epoch == 2


def fit_only_with(cfg, callback):
    from softmax_lab.jobs import training_run

    run = training_run.build_run(cfg)
    run.trainer.callbacks.append(callback)
    run.trainer.fit(run.module, datamodule=run.datamodule, weights_only=True)
    return run


# ---- through the CLI ----

def search_args(tiny_data, tmp_path, name, *extra):
    return ["-m", "hparams_search=optuna", f"data.data_dir={tiny_data}", "data.val_size=100", *QUIET,
            "hydra.sweeper.study_name=s", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
            f"hydra.sweep.dir={tmp_path / name}", *extra]


def trials(tmp_path):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()


@pytest.mark.slow
def test_a_search_continues_its_study_and_a_stopped_one_fails_its_trial(tiny_data, tmp_path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    first = run_cli(search_args(tiny_data, tmp_path, "first", "trainer.max_epochs=1", "hydra.sweeper.n_trials=2"),
                    env=env, measured=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "trainer.max_epochs=1 from the command line: fixed, not searched over range(5, 30, step=5)" in first.stdout
    client, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    # the parent says what the trials really varied; the trials trained what it says
    assert parent.data.params["trainer.max_epochs"].startswith("1 (fixed by the command line")
    assert parent.data.params["optimizer.lr"] == "tag(log, interval(0.001, 1.0))"
    assert {k.data.params["trainer.max_epochs"] for k in kids} == {"1"}
    assert sorted(int(k.data.tags["optuna_trial"]) for k in kids) == [0, 1]
    study = {t.number: t for t in trials(tmp_path)}
    for k in kids:  # each child trained its trial's values
        t = study[int(k.data.tags["optuna_trial"])]
        assert float(k.data.params["optimizer.lr"]) == t.params["optimizer.lr"]
        assert k.data.metrics["val/acc_best"] == pytest.approx(t.value, abs=1e-6)
    description = parent.data.tags["mlflow.note.content"]
    best = max(study.values(), key=lambda t: t.value)
    assert f"Best: trial {best.number}" in description and "python src/train.py" in description
    block = "python src/train.py" + description.split("python src/train.py", 1)[1].split("\n\n", 1)[0]
    assert max(len(line) for line in block.splitlines()) < 100  # one override a line: it wraps on the page
    command = " ".join(block.replace("\\\n", " ").split())  # and pastes as one command in a POSIX shell
    assert f"optimizer.lr={best.params['optimizer.lr']!r}" in command and "hparams_search" not in command
    # each trial's run reads short: its number first, its values to 4 significant digits
    from softmax_lab.console import short_value

    for k in kids:
        lr = float(k.data.params["optimizer.lr"])
        assert k.info.run_name.startswith(f"trial {k.data.tags['optuna_trial']}: loss=ce impl=nn")
        assert f"optimizer.lr={short_value(lr)}" in k.info.run_name and k.data.tags["kind"] == "train"
        assert len(short_value(lr).replace("e-0", "")) <= 7  # 4 significant digits, never a run of them
    assert {"search.png", "search.md"} <= {a.path.split("/")[-1] for a in client.list_artifacts(
        parent.info.run_id, "summary")}

    # the same command again continues the study; interrupted mid-trial, that trial is FAIL and its run KILLED
    proc = subprocess.Popen([sys.executable, "src/train.py", *search_args(
        tiny_data, tmp_path, "again", "trainer.max_epochs=3000", "hydra.sweeper.n_trials=2")], cwd=ROOT,
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = tmp_path / "again" / "2" / "checkpoints" / "last.ckpt"  # job number = trial number
    deadline = time.time() + 180
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    states = {t.number: (t.state.name, t.user_attrs) for t in trials(tmp_path)}
    assert states[0][0] == states[1][0] == "COMPLETE" and states[2] == ("FAIL", {"interrupted": True})
    assert len(states) == 3  # the second trial of the stopped search was never asked
    client, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    killed = [r for r in runs if r.data.tags.get("optuna_trial") == "2"]
    assert [r.info.status for r in killed] == ["KILLED"]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_two_processes_share_one_study_and_pruned_trials_say_so(tiny_data, tmp_path):
    """Two workers on one sqlite study: unique trial numbers, different proposals; a pruner that prunes every
    accuracy stops each trial after its first epoch, and the study, MLflow and the summary say PRUNED."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    prune_all = ["trainer.max_epochs=3", "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=none",
                 "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", "+hydra.sweeper.pruner.lower=1.1"]
    procs = [subprocess.Popen([sys.executable, "src/train.py", *search_args(tiny_data, tmp_path, f"w{i}", *prune_all)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = trials(tmp_path)
    assert sorted(t.number for t in study) == [0, 1, 2, 3]
    assert {t.state.name for t in study} == {"PRUNED"} and {t.user_attrs[PRUNED_AT] for t in study} == {1}
    assert len({t.params["optimizer.lr"] for t in study}) == 4  # each process seeds its own sampler
    client, runs = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(kids) == 4 and {r.info.status for r in kids} == {"FINISHED"}
    assert {(r.data.tags["optuna_state"], r.data.tags["pruned_at_epoch"]) for r in kids} == {("PRUNED", "1")}
    assert all(r.data.tags["mlflow.note.content"].startswith("**Pruned**") for r in kids)
    assert all("| PRUNED |" in (tmp_path / w / "sweep_summary.md").read_text() for w in ("w1", "w2"))
