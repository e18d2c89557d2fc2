"""What the entry points set before a job runs: what a user sees on the console.

Lightning's start-up banners (GPU available, TPU, seed tips) add nothing for this model. Warnings are
filtered by their message, each one named here with the reason it is not the user's to act on; every
other warning shows. Tests set the same filters in pyproject.toml.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import warnings

# (message regex, why it is not the user's to act on)
NOT_FOR_USERS = [
    (r".*isinstance\(treespec, LeafSpec\).*", "torch's deprecation, raised inside Lightning's own code"),
    (r".*when logging on epoch level in distributed setting.*",
     "epoch values are reduced across DDP processes by the module itself (steps/train_totals.py, torchmetrics)"),
    (r".*configure_optimizers` returned `None`.*",
     "impl=scratch has no torch optimizer by design: Lightning steps its stand-in (steps/hand_steps.py)"),
]
QUIET_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "lightning_fabric.utilities.seed")
# MLflow logs a store's database error with its traceback before raising it; the project says it in one line that
# names the store and the fix (tracking/store.py), so a full disk is not 2,000 lines of SQLAlchemy
SAID_BY_US = ("mlflow.store.db.utils",)


def redact(uri: str) -> str:
    """A URI (a tracking store, a study's database) without its password, fit to print or log."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# scheme://user:password@host: the password of a store's or a study's URL, wherever such a URL is quoted; also as
# Hydra escapes it in a sweep's overrides (postgresql\://lab\:pw@host) and as JSON escapes that (\\:)
URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*\\*://[^\s:/@'\"\\]*)(\\*:)[^\s@/'\"]+@")


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: what the project writes, logs and sends to MLflow
    (files.write_text, SecretFilter, tracking/store.py's client) passes through it."""
    return URL_PASSWORD.sub(r"\1\2***@", text) if "@" in text else text


class SecretFilter(logging.Filter):
    """A logging filter (on Hydra's console and train.log handlers, conf/hydra/default.yaml) that takes passwords out
    of every record: Hydra's own launch and error lines quote the overrides, a store's URL among them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = redact_text(message), ()
        if record.exc_info and "@" in str(record.exc_info[1]):
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


def short_value(value) -> str:
    """A value as people read it in a name or a table: a float to 4 significant digits (0.0297341206 -> 0.02973,
    the exact value stays in the params); anything else as it is."""
    text = str(value)
    if isinstance(value, bool) or not isinstance(value, float | str):
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if text.lstrip("+-").isdigit() or not math.isfinite(number):  # a whole number; inf and nan as they are
        return text
    short = f"{number:.4g}"
    if "e" not in short and len(short.partition(".")[2]) > 5:  # 0.003755 reads as 3.755e-03: no run of digits
        short = f"{number:.3e}"
    return short if len(short) < len(text) else text


def short_overrides(overrides: str) -> str:
    """`key=value ...` with each value short (short_value)."""
    return " ".join(f"{o.split('=', 1)[0]}={short_value(o.split('=', 1)[1])}" if "=" in o else o
                    for o in overrides.split())


HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_./:+\-@]*")  # a value Hydra's override grammar reads as it is
SHELL_PLAIN = re.compile(r"[A-Za-z0-9_./:+\-@=,~%]+")  # an argument a POSIX shell passes on as it is


def hydra_override(key: str, value) -> str:
    """`key=value` as Hydra parses it back to `value`: single-quoted when Hydra's grammar would not read it as is (a
    path with spaces, non-ASCII letters, a comma that would make it a sweep). Inside quotes Hydra reads a backslash
    as itself except before a quote or at the end, where it is doubled."""
    text = str(value)
    if HYDRA_PLAIN.fullmatch(text):
        return f"{key}={text}"
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    quoted = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted)
    return f"{key}='{quoted}'"


def shell_word(text: str) -> str:
    """`text` as one argument of a POSIX shell: quoted where the shell would change it."""
    import shlex

    if SHELL_PLAIN.fullmatch(text):
        return text
    return f'"{text}"' if not set(text) & set('"$`\\!') else shlex.quote(text)  # "a='b c'" reads better


def pasteable(script: str, overrides: list[str]) -> str:
    """`python <script> <overrides>` as it pastes in a POSIX shell."""
    return " ".join(["python", script, *map(shell_word, overrides)])


def quiet_console() -> None:
    for message, _why in NOT_FOR_USERS:
        warnings.filterwarnings("ignore", message)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SAID_BY_US:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def quiet_log_files() -> None:
    """A log file (Hydra's <run dir>/train.log) that cannot be written, a full disk say: one line, once, instead of
    logging's `--- Logging error ---` traceback for every record. The console keeps every line."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handleError = _said_once(handler)


def _said_once(handler: logging.FileHandler):
    said = []

    def handle_error(record: logging.LogRecord) -> None:
        if not said:
            said.append(True)
            e = sys.exc_info()[1]
            sys.stderr.write(f"warning: the log file {handler.baseFilename} cannot be written "
                             f"({getattr(e, 'strerror', None) or e}); the console shows every line\n")

    return handle_error


def print_help(config_name: str, overrides: list[str]) -> None:
    """`--help` as Hydra prints it (the app's help template: groups, Trainer flags, the config the overrides give),
    composed directly: Hydra's own help lists every option of every group through a fresh config repository each,
    seconds of work for a page of text."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from softmax_lab.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    template = cfg.hydra.help.template
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # the job's config, as Hydra shows it
    groups = sorted(d for d in CONFIG_DIR.rglob("*") if d.is_dir() and any(d.glob("*.yaml"))
                    and d.relative_to(CONFIG_DIR).parts[0] != "hydra")
    listing = "\n".join(f"{d.relative_to(CONFIG_DIR).as_posix()}: {', '.join(sorted(p.stem for p in d.glob('*.yaml')))}"
                        for d in groups)
    print(template.replace("$APP_CONFIG_GROUPS", listing + "\n").replace("$CONFIG", OmegaConf.to_yaml(cfg)))


_DONE: dict[str, int | None] = {"code": None}


def leave_without_teardown() -> None:
    """Registered before the job imports anything heavy, so it runs after every library's own exit handler: once
    the command ended on its normal path (`finished`), flush the streams and the logs and exit without the
    interpreter's teardown, which spends seconds here freeing torch's modules. By then every non-daemon thread has
    been joined and every write of the run is done (the store writes are synchronous). Under coverage (the test
    suite), whose handler must run after this one, the interpreter exits as usual."""
    import atexit

    atexit.register(_leave)


def finished(code: int) -> None:
    _DONE["code"] = code
    sys.exit(code)


def _leave() -> None:
    import os

    if _DONE["code"] is None or os.environ.get("COVERAGE_PROCESS_START") or os.environ.get("COVERAGE_PROCESS_CONFIG"):
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_DONE["code"])
