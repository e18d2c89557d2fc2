"""ckpt_path=<run dir>/checkpoints/last.ckpt: the run a training resumes, and what it may and may not change."""

from __future__ import annotations

from pathlib import Path

from softmax_lab.trainer.checkpoints import (
    CheckpointError,
    check_resumable,
    epochs_done,
    limit_reached,
    read_checkpoint,
    run_dir_of,
)


class Resume:
    def __init__(self, path: Path, ckpt: dict):
        self.path, self.ckpt = path, ckpt
        self.run_dir = run_dir_of(ckpt, path)  # the interrupted run's own dir, where the resumed run continues
        self.run_id = ckpt.get("mlflow_run_id")
        self.epochs_done = epochs_done(ckpt)

    @classmethod
    def read(cls, ckpt_path: str) -> Resume:
        path = Path(ckpt_path).expanduser()
        return cls(path, read_checkpoint(path))

    def check(self, model_hparams, data_hparams) -> None:
        check_resumable(self.ckpt, self.path, model_hparams, data_hparams)

    def refuse_if_finished(self, tracker, max_epochs: int, max_steps: int) -> None:
        """Nothing left to train: complete an interrupted run (test, pictures, model); refuse a finished one."""
        limit = limit_reached(self.ckpt, max_epochs, max_steps)
        if limit is None:
            return
        run = tracker.find_run(self.run_id)
        if run is not None and run.info.status != "FINISHED":
            print(f"nothing left to train in {self.path} ({limit}); finishing its {run.info.status} run: testing "
                  "the best checkpoint", flush=True)
            return
        key = limit.split("=", 1)[0]
        done = f"{self.epochs_done} epoch(s)" if key == "trainer.max_epochs" else f"step {self.ckpt['global_step']}"
        raise CheckpointError(f"ckpt_path={self.path} has nothing left to train: its run finished {done} and {limit}. "
                              f"Fix: {key}=<more> to train on, or `python src/eval.py ckpt_path=...` to test it again.")
