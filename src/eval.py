"""Evaluate a checkpoint on the official test set: `python src/eval.py ckpt_path=...` (see README)."""

import hydra

from softmax_lab.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg) -> float:
    from softmax_lab.jobs.eval_job import evaluate
    from softmax_lab.jobs.outcome import run_job

    return run_job(evaluate, cfg, objective="test/acc")


if __name__ == "__main__":
    from softmax_lab.config import check_command_line
    from softmax_lab.console import quiet_console

    check_command_line("eval")
    quiet_console()
    main()
