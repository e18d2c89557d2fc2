"""Train softmax regression on Fashion-MNIST: `python src/train.py loss=huber impl=scratch` (see README)."""

import sys

import hydra

from softmax_lab.config import register_resolvers
from softmax_lab.training import configure_logging_quietly

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg) -> float:
    from softmax_lab.cli import run_job
    from softmax_lab.training import train

    return run_job(train, cfg)


if __name__ == "__main__":
    configure_logging_quietly()
    main()
    from softmax_lab import sweep

    sys.exit(1 if sweep.FAILED_JOBS else 0)
