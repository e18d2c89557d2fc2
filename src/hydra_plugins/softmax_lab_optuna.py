"""softmax-lab's Optuna sweeper (`hydra/sweeper=optuna`, which hparams_search=optuna selects).

Hydra finds sweepers only in the `hydra_plugins` package, so the class lives here; the work is in softmax_lab.search.
It replaces hydra-optuna-sweeper, whose maintained line (1.4.0rc3) runs Optuna 4+ but cannot prune (a trial never
learns its number), leaves an interrupted trial RUNNING and restarts job numbers: see docs/sweeps.md."""

from __future__ import annotations

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    def __init__(self, **config):  # the sweeper's config (conf/hydra/sweeper/optuna.yaml), read from hydra.sweeper
        self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    @staticmethod
    def varied(config) -> tuple[dict[str, str], dict[str, str]]:
        """What a search varies, for its MLflow parent run (tracking/sweep.py asks before any trial): the trial's
        number and the space it really searches; the keys of the space the command line fixes. The search is planned
        (and its study opened) as it will run: ConfigError, before any run exists, when it cannot."""
        from softmax_lab.config import TRIAL_KEY
        from softmax_lab.search.loop import plan

        space, _ = plan(config.hydra.sweeper, list(config.hydra.overrides.task))
        fixed = {k: f"{v} (fixed by the command line; the space said {was})" for k, (v, was) in space.fixed.items()}
        return {TRIAL_KEY: "the Optuna trial's number", **space.described}, fixed

    def sweep(self, arguments: list[str]) -> None:
        from softmax_lab.errors import UserError
        from softmax_lab.search.loop import run_search
        from softmax_lab.tracking.sweep import end_parent_run, refuse

        try:
            run_search(self.launcher, self.config, arguments)
        except UserError as e:  # the study's database went away mid-search, say
            end_parent_run("FAILED", str(e))
            refuse(e)
