"""Checkpoints load without unpickling: weights and training state round-trip through safetensors + JSON, and a
file carrying pickled code is refused, by the loader and by the converter, without the code running."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from geomoe.core.errors import ModelError
from geomoe.core.models.checkpoint import (
    MANIFEST_FILE,
    PICKLED_FILE,
    WEIGHTS_FILE,
    convert_pickled,
    read_checkpoint,
    read_trained,
    save_checkpoint,
    trainable_state,
)
from geomoe.families.smgeo.model import SMGeo
from geomoe.families.smgeo.spec import SMGeoModelSpec
from tiny_jobs import smgeo_job


class _Payload:
    """Unpickling this writes a marker file: the canary for code running on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def trained(tmp_path: Path) -> tuple[SMGeo, torch.optim.Optimizer, object]:
    spec = smgeo_job(tmp_path, tmp_path)
    torch.manual_seed(0)
    model = SMGeo(spec.model_as(SMGeoModelSpec))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    schedule.step()
    return model, optimizer, spec


def test_weights_and_training_state_round_trip(tmp_path: Path, trained: tuple) -> None:
    model, optimizer, spec = trained
    save_checkpoint(tmp_path / "ckpt", model, spec, 2, 3, optimizer=optimizer.state_dict(), scheduler={"last_epoch": 1})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        MANIFEST_FILE,
        WEIGHTS_FILE,
        "training.safetensors",
    ]
    payload, loaded_spec = read_trained(tmp_path / "ckpt")
    assert loaded_spec == spec and (payload["stage"], payload["epoch"]) == (2, 3)
    saved = trainable_state(model)
    assert payload["model"].keys() == saved.keys()
    assert all(torch.equal(payload["model"][k], v) for k, v in saved.items())
    restored = torch.optim.AdamW(model.parameters(), lr=1e-3)
    restored.load_state_dict(payload["optimizer"])  # the optimizer accepts it: ids, groups and moments intact
    for index, state in optimizer.state_dict()["state"].items():
        assert all(torch.equal(state[k], restored.state_dict()["state"][index][k]) for k in state)
    assert payload["scheduler"] == {"last_epoch": 1}


def test_a_pickled_checkpoint_is_refused_with_the_conversion_command_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / PICKLED_FILE).write_bytes(
        pickle.dumps({"model": {}, "spec": {}, "stage": 1, "epoch": 0, "x": _Payload(marker)})
    )
    with pytest.raises(ModelError, match=r"old pickle format.*geomoe convert"):
        read_checkpoint(folder)
    with pytest.raises(ModelError, match=f"{PICKLED_FILE}: refused"):
        convert_pickled(folder)
    assert not marker.exists() and not (folder / MANIFEST_FILE).exists()


def test_a_weights_file_that_is_a_pickle_is_refused_without_running(tmp_path: Path, trained: tuple) -> None:
    model, _, spec = trained
    save_checkpoint(tmp_path / "ckpt", model, spec, 1, 0)
    marker = tmp_path / "ran"
    (tmp_path / "ckpt" / WEIGHTS_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelError, match=f"{WEIGHTS_FILE}: not a safetensors file"):
        read_checkpoint(tmp_path / "ckpt")
    assert not marker.exists()


def test_a_plain_version_1_checkpoint_converts_to_the_same_weights(
    tmp_path: Path, trained: tuple, capsys: pytest.CaptureFixture[str]
) -> None:
    model, optimizer, spec = trained
    folder = tmp_path / "old"
    folder.mkdir()
    payload = {
        "model": trainable_state(model),
        "spec": spec.model_dump(mode="json"),
        "stage": 1,
        "epoch": 4,
        "optimizer": optimizer.state_dict(),
    }
    torch.save(payload, folder / PICKLED_FILE)
    convert_pickled(folder, tmp_path / "new")
    converted = read_checkpoint(tmp_path / "new")
    assert converted["epoch"] == 4 and all(torch.equal(converted["model"][k], v) for k, v in payload["model"].items())
    # converting it again is a no-op that says so, in one line
    from geomoe.cli import main

    assert main(["convert", str(tmp_path / "new")]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"{tmp_path / 'new'}: already in the current format (checkpoint.json + safetensors); nothing to convert"
    )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "no checkpoint.json"),
        (b"{not json", "not valid JSON"),
        (b'{"format": "other"}', "not a geomoe checkpoint"),
        (b'{"format": "geomoe-checkpoint", "version": 7}', "checkpoint version 7"),
    ],
)
def test_a_broken_manifest_is_named(tmp_path: Path, trained: tuple, content: bytes | None, reason: str) -> None:
    model, _, spec = trained
    save_checkpoint(tmp_path / "ckpt", model, spec, 1, 0)
    manifest = tmp_path / "ckpt" / MANIFEST_FILE
    manifest.unlink() if content is None else manifest.write_bytes(content)
    with pytest.raises(ModelError, match=reason):
        read_checkpoint(tmp_path / "ckpt")
