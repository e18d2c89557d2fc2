"""Optuna searches (`-m hparams_search=optuna`): the search space from Hydra's sweep syntax, the study on its
storage, pruning from inside a trial, and the search's report. The Hydra sweeper that drives them is
src/hydra_plugins/softmax_lab_optuna.py (Hydra finds sweepers only under `hydra_plugins`)."""
