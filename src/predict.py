"""Predict the class of image files with a trained checkpoint: `python src/predict.py ckpt_path=... images=...`."""

import hydra

from softmax_lab.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg) -> float:
    from softmax_lab.jobs.outcome import run_job
    from softmax_lab.jobs.predict_job import predict

    return run_job(predict, cfg, objective="predicted")


if __name__ == "__main__":
    from softmax_lab.config import check_command_line
    from softmax_lab.console import quiet_console

    check_command_line("predict")
    quiet_console()
    main()
