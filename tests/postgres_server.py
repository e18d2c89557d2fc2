"""A private PostgreSQL server for the tests (Debian's `postgresql` package, which .ci/run installs): a cluster in a
temporary folder on a free loopback port, password authentication on, with a helper to create databases."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD = "Sekr3t-pw.42"  # what the tests grep for: no file, line or MLflow field may hold it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    bin_dir: Path
    socket_dir: Path
    port: int
    as_user: list[str]  # runs a command as the cluster's owner (root cannot own one)

    def sql(self, statement: str) -> None:
        subprocess.run([*self.as_user, str(self.bin_dir / "psql"), "-h", str(self.socket_dir), "-p", str(self.port),
                        "-U", "postgres", "-qc", statement], check=True, capture_output=True, timeout=60)

    def new_database(self, name: str, user: str = "lab") -> str:
        """A fresh database owned by `user` (password PASSWORD); its URL."""
        self.sql(f"CREATE DATABASE {name} OWNER {user}")
        return f"postgresql://{user}:{PASSWORD}@127.0.0.1:{self.port}/{name}"


def start_postgres(folder: Path) -> tuple[Postgres, callable]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which(
        "initdb") else [])
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but PostgreSQL is not installed (.ci/run installs Debian's postgresql package)")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql)")
    bin_dir = Path(found[-1]).parent
    as_user = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
        pwd.getpwnam("postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "postgres")
        os.chmod(folder, 0o755)
    data, port = folder / "data", free_port()
    r = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                        "--auth-host=scram-sha-256"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"initdb failed: {r.stdout[-1000:]} {r.stderr[-1000:]}"
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                    f"-k {folder} -h 127.0.0.1 -p {port}", "start"], check=True, capture_output=True, timeout=120)
    server = Postgres(bin_dir, folder, port, as_user)
    server.sql(f"CREATE USER lab PASSWORD '{PASSWORD}'")

    def stop():
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)

    return server, stop
