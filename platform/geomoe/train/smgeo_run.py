"""Driver side of SMGeo: Ray Data inputs, one TorchTrainer fit (best epoch by validation acc@0.5), and the
test evaluation of the best checkpoint against two baselines on the same split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from geomoe import storage
from geomoe.config import JobSpec
from geomoe.data.images import image_size
from geomoe.data.localization import centre_box_baseline, localization_report
from geomoe.data.prepared import PreparedDataset
from geomoe.train.run import cached_result, recorded_stage, run_trainer

COLUMNS = ["sample_id", "query_path", "reference_path", "click_x", "click_y", "box", "class_name"]


def localization_rows(manifest: dict[str, Any], split: str) -> pa.Table:
    prepared = PreparedDataset.of(manifest).require("localization", "an SMGeo job")
    return prepared.read_split(split, columns=COLUMNS)


def train_smgeo(spec: JobSpec, manifest: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Train (or reuse the recorded run), then evaluate the best checkpoint on the test split."""
    from geomoe.pipelines.localize import pairs_dataset
    from geomoe.train.smgeo_loop import VAL_METRIC, smgeo_train_loop

    splits = {s: localization_rows(manifest, s) for s in ("train", "val", "test")}
    for split, table in splits.items():
        if table.num_rows == 0:
            raise ValueError(f"the prepared {split} split at {manifest['table']} is empty")
    if splits["train"].num_rows < spec.train.batch_size:
        raise ValueError(f"train.batch_size {spec.train.batch_size} exceeds the {splits['train'].num_rows} samples")
    record = recorded_stage(spec, run_dir, 1)
    if record is None:
        m, materialize = spec.smgeo, spec.train.materialize_inputs
        datasets = {s: pairs_dataset(splits[s], m.query_size, m.reference_size, materialize) for s in ("train", "val")}
        steps = splits["train"].num_rows // spec.train.batch_size
        record = run_trainer(spec, run_dir, 1, smgeo_train_loop, datasets, steps, best_by=VAL_METRIC)
    checkpoint = record["checkpoint"]
    test = cached_result(
        storage.join(run_dir, "eval_test.json"),
        spec,
        1,
        lambda: evaluate_smgeo(spec, checkpoint, splits["train"], splits["test"]),
    )
    return {"checkpoint": checkpoint, "best_epoch": record["best"]["epoch"], "validation": record["best"], "test": test}


def evaluate_smgeo(spec: JobSpec, checkpoint: str, train: pa.Table, test: pa.Table) -> dict[str, Any]:
    """DetGeo metrics of SMGeo, of SMGeo with the click zeroed, and of a centre box of the mean training size."""
    from geomoe.pipelines.localize import pairs_dataset, predict_boxes

    m, res = spec.smgeo, spec.resources
    pairs = pairs_dataset(test, m.query_size, m.reference_size, materialize=True)
    rows = test.to_pylist()
    gt = np.array([r["box"] for r in rows])
    classes = [r["class_name"] for r in rows]
    report: dict[str, Any] = {}
    wh = np.zeros((len(rows), 2))
    for name, use_click in (("smgeo", True), ("click_zeroed", False)):
        predicted = predict_boxes(checkpoint, pairs, use_click, res.data_concurrency, res.use_gpu)
        pred = np.stack([predicted[str(r["sample_id"])][0] for r in rows])
        wh = np.stack([predicted[str(r["sample_id"])][1] for r in rows])
        report[name] = localization_report(pred, gt, wh, classes)
    train_rows = train.to_pylist()
    train_wh = np.array([image_size(r["reference_path"]) for r in train_rows], np.float64)
    centre = centre_box_baseline(np.array([r["box"] for r in train_rows]), train_wh, wh)
    report["centre_box"] = localization_report(centre, gt, wh, classes)
    return report
