"""Truthful at the edges: full disks, Hydra's deletions, hydra.job.chdir, commands pasted back, work continued
across versions and processes. Each class as a user meets it, with the fault made real where this machine allows
(a small tmpfs for a full disk: root only, as CI runs)."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import QUIET, ROOT, compose, mlflow_runs, run_cli, tiny_overrides, unmeasured_env

# ---- full disks ---------------------------------------------------------------------------------------------------


def test_a_copy_that_fills_the_disk_names_its_destination_not_the_temporary_source():
    from softmax_lab.errors import StorageError

    e = OSError(errno.ENOSPC, "No space left on device", "/tmp/tmp9k2t0dop", None, "/runs/1/checkpoints/.last.tmp")
    said = str(StorageError.from_os_error(e))
    assert said.startswith("cannot write /runs/1/checkpoints/.last.tmp: the disk is full.") and "/tmp/tmp9" not in said


def test_a_log_file_that_cannot_be_written_is_said_once_in_one_line(tmp_path, capsys):
    from softmax_lab.console import quiet_log_files

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    handler = logging.FileHandler(tmp_path / "train.log")
    handler.stream = FullDisk()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        quiet_log_files()
        for i in range(3):
            logging.getLogger("softmax_lab.test").warning("line %d", i)
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert "--- Logging error ---" not in err and "Traceback" not in err
    assert err.count(f"warning: the log file {tmp_path / 'train.log'} cannot be written (No space left on device)") == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root only: CI runs as root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(mount)],
                                            capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root and can mount a tmpfs: the full-disk tests must run there")
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["run dir", "store"])
def test_a_full_disk_ends_the_run_failed_in_one_line(tiny_data, tmp_path, small_disk, where):
    if where == "run dir":  # about 120 kB left: the config files fit, the checkpoints do not
        (small_disk / "filler").write_bytes(b"\0" * 880_000)
    store = small_disk / "mlflow.db" if where == "store" else tmp_path / "mlflow.db"
    run_dir = small_disk / "run" if where == "run dir" else tmp_path / "run"
    r = run_cli(tiny_overrides(tiny_data, "trainer.max_epochs=30", f"hydra.run.dir={run_dir}"),
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out and "--- Logging error ---" not in out and len(out.splitlines()) < 15, out
    if where == "run dir":
        assert f"cannot write {run_dir}" in out and "the disk is full" in out
        _, runs = mlflow_runs(f"sqlite:///{store}")
        assert [(x.info.status, x.data.tags["state"]) for x in runs] == [("FAILED", "failed")]
    else:
        assert f"the MLflow store sqlite:///{store}" in out and "database or disk is full" in out


# ---- Hydra's deletions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deleted, fix", [("seed", "seed=42"), ("logger", "logger=none"),
                                         ("model", "model=softmax_regression")])
def test_deleting_what_training_needs_is_one_line_with_what_to_write_instead(make_cfg, deleted, fix):
    from softmax_lab.config import validate_config
    from softmax_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"~{deleted} deletes what training needs \(fix: {fix}"):
        validate_config(make_cfg(f"~{deleted}"))


def test_a_deletion_hydra_allows_is_honoured_and_named(make_cfg, tmp_path, tiny_data):
    from softmax_lab.jobs.train_job import train
    from softmax_lab.jobs.training_run import build_run, epoch_limit

    run = build_run(make_cfg("~trainer.max_epochs"), ["~trainer.max_epochs"])
    assert epoch_limit(run) == 1000  # Lightning's own default, as Lightning documents
    assert run.name == "loss=ce impl=nn ~trainer.max_epochs"
    overrides = [o for o in tiny_overrides(tiny_data) if o != "~callbacks.progress_bar"]
    train(compose([*overrides, "~callbacks"], tmp_path / "run"))  # no callbacks at all: no checkpoint, last weights
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs[0].info.status == "FINISHED" and "test/acc" in runs[0].data.metrics
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- hydra.job.chdir=true: a relative store means the launch directory --------------------------------------------


@pytest.mark.slow
def test_with_chdir_a_relative_store_is_the_launch_directorys_for_a_run_and_a_sweep(tiny_data, tmp_path):
    env = unmeasured_env({"MLFLOW_TRACKING_URI": "sqlite:///rel.db"})
    common = [*tiny_overrides(tiny_data, "trainer.max_epochs=1"), "hydra.job.chdir=true"]
    single = subprocess.run([sys.executable, str(ROOT / "src/train.py"), *common, f"hydra.run.dir={tmp_path / 'r'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    sweep = subprocess.run([sys.executable, str(ROOT / "src/train.py"), "-m", "loss=ce,mse", *common,
                            f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert single.returncode == 0 and sweep.returncode == 0, single.stderr + sweep.stdout + sweep.stderr
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.db")) == ["rel.db"]
    _, runs = mlflow_runs(f"sqlite:///{tmp_path / 'rel.db'}")
    assert len(runs) == 4  # the run, the sweep's parent and its two jobs


def test_launch_relative_leaves_absolute_and_other_stores_alone(tmp_path, monkeypatch):
    from softmax_lab.config import launch_relative

    monkeypatch.chdir(tmp_path)
    assert launch_relative("sqlite:///a/b.db?timeout=5") == f"sqlite:///{tmp_path / 'a/b.db'}?timeout=5"
    for kept in ("sqlite:////abs/m.db", "sqlite:///:memory:", "http://host:5000", "postgresql://u@h/db", None):
        assert launch_relative(kept) == kept


# ---- commands we print, pasted back -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/runs/plain/last.ckpt", "/my runs/ünïcode, and 'quotes'/last.ckpt",
                                  "/a $HOME \"b\"/c", "back\\slash\\", "tab\there"])
def test_a_printed_override_pastes_in_a_posix_shell_and_hydra_reads_it_back(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from softmax_lab.console import hydra_override, pasteable

    command = pasteable("src/train.py", ["loss=ce", hydra_override("ckpt_path", path)])
    args = subprocess.run(["sh", "-c", command.replace("python src/train.py", "printf '%s\\n'", 1)],
                          capture_output=True, text=True, check=True).stdout.split("\n")[:2]
    assert [o.value() for o in OverridesParser.create().parse_overrides(args)] == ["ce", path]


@pytest.mark.slow
def test_the_resume_command_a_killed_run_prints_pastes_from_a_path_with_spaces_and_accents(tiny_data, tmp_path):
    from softmax_lab.console import hydra_override

    run_dir = tmp_path / "my runs" / "énergie, 2"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = unmeasured_env({"MLFLOW_TRACKING_URI": store})
    proc = subprocess.Popen([sys.executable, "src/train.py", *tiny_overrides(tiny_data, "trainer.max_epochs=4000"),
                             hydra_override("hydra.run.dir", run_dir)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    said = next(line for line in out.splitlines() if "resume with " in line).split("resume with ", 1)[1]
    _, runs = mlflow_runs(store)
    described = runs[0].data.tags["mlflow.note.content"].split("`")[1]  # the description's command
    assert described.startswith("python src/train.py ") and said in described
    # pasted as printed (fewer epochs: past them, the resume finishes the KILLED run by testing its best checkpoint)
    pasted = subprocess.run(["sh", "-c", described.replace("trainer.max_epochs=4000", "trainer.max_epochs=2")
                             .replace("python ", f"{sys.executable} ", 1)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    _, runs = mlflow_runs(store)
    assert [(x.info.status, x.data.tags["run_dir"]) for x in runs] == [("FINISHED", str(run_dir))]


# ---- work continued across versions and processes -----------------------------------------------------------------


def test_a_result_an_earlier_version_logged_at_a_later_step_shows_the_new_value(tmp_path):
    from mlflow.tracking import MlflowClient

    from softmax_lab.tracking.logger import BufferedMlflowLogger
    from softmax_lab.tracking.store import connect

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id = connect(uri, "fashion-mnist-softmax")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "test/acc", 0.5, step=2150)  # an earlier version: the result at the last step
    logger = BufferedMlflowLogger(logged_until={"test/acc": 2150, "train/loss": 2150}, experiment_name=
                                  "fashion-mnist-softmax", tracking_uri=uri, run_id=run_id)
    logger.log_metrics({"train/loss": 0.4}, step=2365)  # the resumed training
    logger.log_metrics({"test/acc": 0.9}, step=0)
    logger.flush()
    assert MlflowClient(uri).get_run(run_id).data.metrics["test/acc"] == 0.9


def test_a_job_dir_an_earlier_command_left_is_not_this_sweeps_job(tmp_path):
    from softmax_lab.tracking.sweep_summary import outcome_rows

    for job in (2, 3):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
    started = time.time()
    os.utime(tmp_path / "2" / ".hydra", (started - 600, started - 600))  # trial 2: an earlier process, SIGKILLed
    assert [(r["job"], r["status"]) for r in outcome_rows(tmp_path, set(), since=started - 1)] == [(3, "LOST")]
    assert [r["job"] for r in outcome_rows(tmp_path, set())] == [2, 3]


def test_quiet_console_leaves_store_errors_to_our_one_line():
    from softmax_lab.console import quiet_console

    quiet_console()
    assert logging.getLogger("mlflow.store.db.utils").getEffectiveLevel() == logging.CRITICAL
    assert QUIET  # the tests' own quiet overrides are unchanged


# ---- a signal while another thread writes -------------------------------------------------------------------------


def test_a_signal_while_a_worker_thread_writes_ends_the_main_thread_at_once_and_never_the_worker():
    """The pictures are drawn in a worker while the main thread logs the model: a signal then must stop the main
    thread (Python raises it there), not wait for the worker's write and then raise inside the worker."""
    import threading

    from softmax_lab.errors import RunInterrupted
    from softmax_lab.signals import INTERRUPTS

    inside, release, raised_in_worker = threading.Event(), threading.Event(), []

    def worker():
        try:
            with INTERRUPTS.protected():
                inside.set()
                release.wait(10)
        except RunInterrupted:
            raised_in_worker.append(True)

    with INTERRUPTS.installed():
        t = threading.Thread(target=worker)
        t.start()
        assert inside.wait(5)
        started = time.monotonic()
        with pytest.raises(RunInterrupted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the main thread's own work: the signal ends it here
        assert time.monotonic() - started < 2
        release.set()
        t.join(5)
    assert not raised_in_worker


def test_the_status_is_written_first_so_a_signal_during_the_rest_leaves_it_true(tmp_path, monkeypatch):
    from softmax_lab.errors import RunInterrupted
    from softmax_lab.tracking.run import MlflowTracker

    tracker = MlflowTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.connect()
    tracker.start_run("loss=ce impl=nn", {})

    def a_signal_arrives(tags):
        raise RunInterrupted(signal.SIGTERM)

    monkeypatch.setattr(tracker, "set_tags", a_signal_arrives)  # the reason and description, after the status
    with pytest.raises(RunInterrupted):
        tracker.finish("FAILED", "training diverged", "**FAILED**: training diverged")
    assert tracker.client.get_run(tracker.run_id).info.status == "FAILED"
