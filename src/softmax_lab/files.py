"""Files other processes read are written whole or not at all: to a temporary file beside the target,
renamed over it, with SIGINT/SIGTERM held until it is in place (signals.py). A kill at any moment,
SIGKILL included, leaves either the previous file or the new one, never half of one. No text written here holds the
password of a URL (console.redact_text). And the databases several processes create at once (an MLflow store, an
Optuna study) are created by one at a time."""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from softmax_lab.console import redact_text
from softmax_lab.signals import protected


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; it replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with protected():
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(redact_text(text))
    return Path(path)


# One key for every creation of this project's tables in a PostgreSQL database (an advisory lock, held by the session)
CREATION_LOCK_KEY = zlib.crc32(b"softmax-lab: creating an MLflow store or an Optuna study")
CONNECT_TIMEOUT_S = 10  # a database that does not answer is said in seconds, before MLflow's minutes of retries


@contextlib.contextmanager
def creation_lock(url: str | None, sqlite_file: Path | None = None) -> Iterator[None]:
    """Processes that create a fresh store's or study's tables at once collide (sqlite: a half-made file; PostgreSQL:
    `UniqueViolation pg_type_typname_nsp_index`): one at a time here. sqlite: a lock file beside `sqlite_file`;
    PostgreSQL: an advisory lock on a connection opened first, so that a wrong password or a database that is down
    raises (SQLAlchemy's OperationalError) within CONNECT_TIMEOUT_S. A no-op for other URLs."""
    if sqlite_file is not None:
        from filelock import FileLock

        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(sqlite_file) + ".lock"):
            yield
        return
    if not url or not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as con:
            con.execute(text("SELECT pg_advisory_lock(:key)"), {"key": CREATION_LOCK_KEY})
            con.commit()
            try:
                yield
            finally:
                con.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": CREATION_LOCK_KEY})
                con.commit()
    finally:
        engine.dispose()


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml", "multirun.yaml")


class SecretFreeHydraFiles(Callback):
    """Hydra writes a job's .hydra/config.yaml, hydra.yaml and overrides.yaml (and a sweep's multirun.yaml) before
    any of the project's code runs: rewritten here through write_text, without passwords, as the job starts."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        hydra = config.hydra
        folders = [Path(hydra.runtime.output_dir) / hydra.output_subdir] if hydra.output_subdir else []
        if hydra.mode == RunMode.MULTIRUN:
            folders.append(Path(hydra.sweep.dir))
        for path in (folder / name for folder in folders for name in HYDRA_FILES):
            if path.is_file() and redact_text(text := path.read_text()) != text:
                write_text(path, text)
