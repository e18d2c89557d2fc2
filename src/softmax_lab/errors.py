"""Errors a user can cause and fix. The entry points print their message, without a traceback."""


class UserError(Exception):
    """A mistake in the input (config, data, environment): one message naming the key or file and the fix."""


class ConfigError(UserError):
    """A config value out of range or of the wrong type."""


class DataError(UserError):
    """The Fashion-MNIST files are missing, incomplete or corrupt."""


class TrackingError(UserError):
    """The MLflow tracking store cannot be reached or used."""


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
