"""Train softmax regression on Fashion-MNIST: `python src/train.py loss=huber impl=scratch` (see README)."""

import sys

import hydra

from softmax_lab.config import register_resolvers

register_resolvers()


def checked_then_trained(cfg) -> dict:
    """A value the config alone refuses is said before torch, Lightning and MLflow are imported (seconds here)."""
    from softmax_lab.config import validate_config

    validate_config(cfg)
    from softmax_lab.jobs.train_job import train

    return train(cfg)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg) -> float:
    from softmax_lab.jobs.outcome import run_job

    return run_job(checked_then_trained, cfg)


if __name__ == "__main__":
    from softmax_lab.config import check_command_line
    from softmax_lab.console import finished, leave_without_teardown, quiet_console

    leave_without_teardown()
    check_command_line("train")
    if sys.argv[1:2] in (["--help"], ["-h"]) or sys.argv[-1:] in (["--help"], ["-h"]):
        from softmax_lab.console import print_help

        print_help("train", [a for a in sys.argv[1:] if a not in ("--help", "-h")])
        sys.exit(0)
    quiet_console()
    try:
        main()
    except BaseException as e:  # noqa: B036 - only a signal is acted on (sweep.stopped); everything goes on up
        from softmax_lab.tracking import sweep

        sweep.stopped(e)  # a signal: a sweep under way ends as a unit, the command with the signal's exit code
        raise
    from softmax_lab.tracking import sweep

    finished(1 if sweep.ACTIVE is not None and sweep.ACTIVE.failed_jobs else 0)
