"""The CLI verbs a user expects, without a cluster: --version, run --dry-run, sweep --set/--address and its
dry-run's header, submit's entrypoint for a sweep, and one-line errors for an unreachable cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from geomoe import __version__
from geomoe.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"geomoe {__version__}"


def test_run_dry_run_prints_the_resolved_spec_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    job = str(REPO / "jobs" / "quickstart.yaml")
    assert main(["run", job, "--dry-run", "--set", "train.batch_size=16"]) == 0
    printed = capsys.readouterr().out
    head, spec = printed.split("resolved spec:\n", 1)
    assert head.startswith("job quickstart (pe_moe): stages synth -> prepare") and "local Ray cluster" in head
    assert yaml.safe_load(spec)["train"]["batch_size"] == 16
    assert list(tmp_path.iterdir()) == []  # nothing written, no Ray started


def test_sweep_set_and_address_reach_every_trial_and_the_dry_run_says_what_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["sweep", str(REPO / "search_spaces" / "smgeo_topk.yaml"), "--quickstart", "--dry-run"]
    assert main([*args, "--set", "train.lr=0.002", "--address", "auto"]) == 0
    printed = capsys.readouterr().out
    header = printed.splitlines()[1:4]
    count = re.match(r"  (\d+) trials \(the grid's (\d+) points x 1 sample\(s\)\), at most (\d+) at once", header[0])
    assert count is not None and count.group(1) == count.group(2) == str(printed.count("- trial "))
    assert "ranked by val_acc50 (max)" in header[0] and "Ray: auto" in header[1] and "Train worker(s)" in header[1]
    assert "searched: model.gmoe.top_k: grid [" in header[2] and "seed: [0, 1, 2]" in header[2]
    trials = [line for line in printed.splitlines() if line.strip().startswith("overrides:")]
    assert trials and all("train.lr=0.002" in t and "resources.address=auto" in t for t in trials)


def test_a_sampled_sweep_dry_run_shows_its_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(REPO / "search_spaces" / "smgeo_loss_weights.yaml"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "trials drawn by optuna" in printed and "model.loss.entropy: loguniform [0.001, 0.1]" in printed


def test_submit_builds_a_sweep_entrypoint_after_validating_the_sweep() -> None:
    from geomoe.on_ray.remote import entrypoint_of

    path = REPO / "search_spaces" / "smgeo_topk.yaml"
    command, name = entrypoint_of(path, Path("search_spaces/smgeo_topk.yaml"), ["train.lr=0.002"], quickstart=True)
    assert command == "geomoe sweep search_spaces/smgeo_topk.yaml --quickstart --set train.lr=0.002"
    assert name == "smgeo_topk-quickstart"
    job, name = entrypoint_of(REPO / "jobs" / "quickstart.yaml", Path("jobs/quickstart.yaml"), [])
    assert job == "geomoe run jobs/quickstart.yaml" and name == "quickstart"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["submit", "jobs/quickstart.yaml", "--address", "http://127.0.0.1:1"], r"http://127\.0\.0\.1:1: cannot reach"),
        (["job", "list", "--address", "http://127.0.0.1:1"], r"http://127\.0\.0\.1:1: cannot reach"),
        (["job", "status", "raysubmit_x"], r"no cluster named: pass --address"),
    ],
)
def test_an_unreachable_cluster_is_one_line(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(expected, err) and "Traceback" not in err


def test_serve_takes_host_and_port_and_starts_a_local_cluster_the_cli_can_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from geomoe.cli import serve_invocation

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    config = str(REPO / "serve" / "quickstart.yaml")
    executable, argv, env = serve_invocation(config, None, "0.0.0.0", 8123)
    assert Path(executable).name == "serve" and argv[:2] == ["serve", "run"] and argv[2] != config
    copy, original = yaml.safe_load(Path(argv[2]).read_text()), yaml.safe_load(Path(config).read_text())
    assert copy["http_options"] == {**original.get("http_options", {}), "host": "0.0.0.0", "port": 8123}
    assert copy["applications"] == original["applications"]  # only the address changes
    assert env["RAY_AUTH_MODE"] == "disabled"  # a local cluster: `serve status` / `ray status` need no token
    _, argv, env = serve_invocation(config, "auto")
    assert argv == ["serve", "run", config, "--address", "auto"] and "RAY_AUTH_MODE" not in env
