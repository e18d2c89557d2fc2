"""Evaluate a checkpoint on the official test set: `python src/eval.py ckpt_path=...` (see README)."""

import hydra

from softmax_lab.config import register_resolvers
from softmax_lab.training import configure_logging_quietly

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg) -> float:
    from softmax_lab.cli import run_job
    from softmax_lab.evaluation import evaluate

    return run_job(evaluate, cfg, objective="test/acc")


if __name__ == "__main__":
    configure_logging_quietly()
    main()
