"""Errors a user can cause and fix. The entry points print their message, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (config, data, environment): one message naming the key or file and the fix."""


class ConfigError(UserError):
    """A config value out of range or of the wrong type."""


class DataError(UserError):
    """The Fashion-MNIST files are missing, incomplete or corrupt."""


class TrackingError(UserError):
    """The MLflow tracking store cannot be reached or used."""


class StoreGone(TrackingError):
    """The tracking store stopped answering mid-run, after MLflow's retries: no more writes are tried."""


class StorageError(UserError):
    """A file of the run could not be written: the disk is full, read-only or not ours to write."""

    @classmethod
    def from_os_error(cls, e: OSError) -> StorageError:
        import errno

        what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied"}.get(e.errno, e.strerror or str(e))
        where = e.filename2 or e.filename or "a file of the run"  # a copy's (filename -> filename2) destination
        return cls(f"cannot write {where}: {what}. Fix: free space or choose a writable place (hydra.run.dir=..., "
                   "MLFLOW_TRACKING_URI=...); the run is recorded FAILED, and the last complete checkpoint resumes it.")


WRITE_ERRNOS = {28, 30, 13, 1, 122}  # ENOSPC, EROFS, EACCES, EPERM, EDQUOT


class DivergenceError(UserError):
    """The loss became NaN or infinite: training stopped and the run is FAILED. `advice` names the likely cause."""

    def __init__(self, loss: float, epoch: int, step: int, advice: str):
        self.loss, self.epoch, self.step, self.advice = loss, epoch, step, advice
        super().__init__(f"training diverged: the loss became {loss} at epoch {epoch}, step {step}. {advice}")


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised from the signal handler so every layer unwinds and records it.

    A BaseException, like KeyboardInterrupt, so that `except Exception` in libraries does not swallow it.
    """

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
