"""What a job shows on the console (a header and a bar per stage, geomoe's warnings, anyone's errors) and what
goes to its run folder's log file instead; a failed job names its logs."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from geomoe.core import ownership, storage
from geomoe.core.logs import capture_console, quiet, run_logs
from geomoe.core.progress import Progress


def test_details_go_to_the_log_file_and_the_console_keeps_ours_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = logging.getLogger("somelib.internal")
    chatty = logging.getLogger("ray.data.fake")  # a library with a console handler of its own, like Ray Data's
    chatty.propagate = False
    chatty.addHandler(own := logging.StreamHandler())
    (tmp_path / "run").mkdir()  # the job started: it wrote its run folder
    try:
        with run_logs(str(tmp_path / "run")) as logs:
            assert quiet()
            capture_console("ray.data.fake")
            library.info("cache miss 17")
            library.warning("deprecated option")
            library.error("worker 3 died")
            logging.getLogger("geomoe.on_ray.jobs").warning("stage 2 reused from an earlier run")
            chatty.info("Running Dataset 42")
    finally:
        chatty.removeHandler(own)
    assert not quiet()
    console = capsys.readouterr().err
    assert "stage 2 reused" in console and "worker 3 died" in console
    assert "cache miss" not in console and "deprecated option" not in console and "Running Dataset" not in console
    text = (tmp_path / "run" / "logs" / "geomoe.log").read_text()
    for line in ("cache miss 17", "deprecated option", "worker 3 died", "stage 2 reused", "Running Dataset 42"):
        assert line in text
    assert logs.location == str(tmp_path / "run" / "logs")
    assert not chatty.handlers  # the run's file handler left with the run


def test_a_job_stopped_before_it_started_writes_nothing_to_its_run_folder(tmp_path: Path) -> None:
    with run_logs(str(tmp_path / "runs" / "job")) as logs:
        logging.getLogger("geomoe.on_ray.jobs").warning("output_root: a local path on a 3-node cluster")
    assert not (tmp_path / "runs").exists()  # the logs stay in a temporary folder, which the CLI names
    assert "a local path on a 3-node cluster" in (Path(logs.location) / "geomoe.log").read_text()
    assert logs.last_lines and "3-node cluster" in logs.last_lines[-1]


def test_verbose_shows_everything_on_the_console(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with run_logs(str(tmp_path / "run"), verbose=True):
        assert not quiet()
        logging.getLogger("somelib").info("cache miss 17")
    assert "cache miss 17" in capsys.readouterr().err


def test_the_ray_session_logs_are_copied_into_the_run_folder_on_s3(tmp_path: Path, s3_bucket: str) -> None:
    session = tmp_path / "session" / "logs"
    session.mkdir(parents=True)
    (session / "worker-abc-01.err").write_text("Traceback: CUDA out of memory\n")
    run = f"{s3_bucket}/runs/job"
    with run_logs(run, session_logs=lambda: session) as logs:
        ownership.claim_dir(run, ownership.Claim("output_root", "job", "run"))  # the job started
        storage.write_text_atomic(f"{run}/spec.json", "{}")
        logging.getLogger("geomoe.on_ray.jobs").info("stage train")
    assert logs.location == f"{run}/logs"
    assert "stage train" in storage.read_text(f"{run}/logs/geomoe.log")
    assert storage.read_text(f"{run}/logs/ray/worker-abc-01.err") == "Traceback: CUDA out of memory\n"


def test_each_stage_has_a_header_and_one_line_when_done(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()  # not a terminal: no bar redraws (a terminal gets a live tqdm bar)
    progress = Progress(["synth", "train", "index"], stream=stream)
    with progress.stage("synth"):
        pass
    with progress.stage("train", total=12, unit="epoch", detail="model, unified (6 epochs each)") as bar:
        bar.show(5)
        bar.show(40)  # a retried epoch is counted again by its worker: the bar stops at its total
        assert bar.done == 12
    with pytest.raises(RuntimeError), progress.stage("index"):
        raise RuntimeError("disk full")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/3] synth" and re.fullmatch(r"  done: [\d.]+ s", lines[1])
    assert lines[2] == "[2/3] train: model, unified (6 epochs each)" and lines[3].startswith("  done: 12 epochs in ")
    assert lines[3].endswith(" s/epoch")
    assert lines[4:] == ["[3/3] index"]  # a failed stage: its header, then the error says the rest


def test_a_terminal_gets_a_live_bar_with_rate_and_eta() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(["train"], stream=stream).stage("train", total=4, unit="epoch") as bar:
        bar.show(2)
    text = stream.getvalue()
    assert "0/4 epoch" in text and "4/4 epoch" in text and "epoch/s" in text  # drawn at start and end


def test_a_failed_job_shows_its_last_log_lines_and_where_the_logs_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geomoe.cli import main
    from geomoe.on_ray import jobs

    def fails(*_: object) -> None:
        (tmp_path / "runs" / "quickstart").mkdir(parents=True)  # as a job's spec.json does
        logging.getLogger("geomoe.on_ray.pipelines.prepare").warning("decoding 0042/image-01.jpeg")
        raise RuntimeError("the raylet died")

    monkeypatch.setattr(jobs, "run_job_timed", fails)
    spec = Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml"
    with pytest.raises(RuntimeError, match="the raylet died"):
        main(["run", str(spec), "--set", f"output_root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert "the job failed; last log lines:" in err and "decoding 0042/image-01.jpeg" in err
    assert f"logs: {tmp_path / 'runs' / 'quickstart' / 'logs'}" in err
    assert "decoding 0042" in (tmp_path / "runs" / "quickstart" / "logs" / "geomoe.log").read_text()
