"""The SMGeo family: drone image + click -> box of that object in a satellite tile (Swin with a grid-level sparse
MoE, query-guided fusion, anchor-free head). One training stage, the best epoch by validation acc@0.5, then the
test split against two baselines: the click zeroed, and a centre box of the mean training size. Registered through
the ``geomoe.families`` entry point."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from geomoe.core.config import FamilyModelSpec, JobSpec, ResourcesSpec, as_section
from geomoe.core.data.images import Fetch, image_size
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.errors import DatasetError
from geomoe.core.stats import format_interval, paired_difference, query_set
from geomoe.families.base import Family, TrainInputs
from geomoe.families.smgeo.localization import centre_box_baseline, localization_report
from geomoe.families.smgeo.results import Localization, SMGeoResult
from geomoe.families.smgeo.spec import SMGeoModelSpec, SMGeoTrainSpec

if TYPE_CHECKING:
    import torch

    from geomoe.on_ray.train.loop import LoopConfig, TrainingTask

COLUMNS = ["sample_id", "query_path", "reference_path", "click_x", "click_y", "box", "class_name"]
METHODS = ("smgeo", "click_zeroed", "centre_box")  # the test report's rows
VALIDATION = "smgeo_val"  # the kept checkpoint on the validation split
TEST_NAMES = {"acc@0.25": "test_acc@0.25", "acc@0.5": "test_acc@0.5", "mIoU": "test_mIoU"}
VAL_NAMES = {"acc@0.25": "val_acc25", "acc@0.5": "val_acc50", "mIoU": "val_miou"}  # as validation reports them


def localization_rows(prepared: PreparedDataset, split: str) -> pa.Table:
    """One split's samples; with the reference images' sizes where prepare recorded them (with its image table)."""
    sizes = ["reference_width", "reference_height"] if prepared.images is not None else []
    return prepared.require("localization", "an SMGeo job").read_split(split, columns=COLUMNS + sizes)


class SMGeoFamily(Family):
    name = "smgeo"
    model_spec = SMGeoModelSpec
    train_spec = SMGeoTrainSpec
    dataset_kind = "localization"
    best_by = "val_acc50"

    def check_job(self, spec: JobSpec) -> None:
        super().check_job(spec)
        if spec.baselines:
            raise ValueError("baselines: SMGeo evaluates its own baselines (click zeroed, centre box)")

    def build_model(self, model: FamilyModelSpec) -> torch.nn.Module:
        from geomoe.families.smgeo.model import SMGeo

        return SMGeo(as_section(model, SMGeoModelSpec))

    def training_task(self, spec: JobSpec, loop: LoopConfig, rank: int) -> TrainingTask:
        from geomoe.families.smgeo.step import training_task

        return training_task(spec, loop, rank)

    def datasets(self, spec: JobSpec, prepared: PreparedDataset) -> TrainInputs:
        from geomoe.families.smgeo.pipelines import pairs_dataset
        from geomoe.on_ray.pipelines.image_store import PreparedImages

        splits = {s: localization_rows(prepared, s) for s in ("train", "val", "test")}
        for split, table in splits.items():
            if table.num_rows == 0:
                raise DatasetError(f"the prepared {split} split at {prepared.table} is empty")
        batch = spec.train.global_batch(spec.resources.num_workers)
        if splits["train"].num_rows < batch:
            raise DatasetError(f"a step's batch of {batch} exceeds the {splits['train'].num_rows} training samples")
        m, materialize = spec.model_as(SMGeoModelSpec), spec.train.materialize_inputs
        fetch = PreparedImages(prepared).fetch
        datasets = {  # training pairs in a new order every epoch; validation as it is
            s: pairs_dataset(splits[s], m.query_size, m.reference_size, materialize, fetch, seed)
            for s, seed in (("train", spec.seed), ("val", None))
        }
        return TrainInputs(datasets, splits["train"].num_rows // batch)

    def evaluate(self, spec: JobSpec, checkpoint: str, prepared: PreparedDataset) -> dict[str, Any]:
        """DetGeo metrics of SMGeo, of SMGeo with the click zeroed, and of a centre box of the mean training size
        on the test split; and of SMGeo on the validation split (``VALIDATION``: the per-sample IoUs behind the
        val_* metrics the papers' tables report, by the test path). Each report names its samples (query_set)."""
        from geomoe.on_ray.pipelines.image_store import PreparedImages

        test, val = localization_rows(prepared, "test"), localization_rows(prepared, "val")
        predict = partial(_predict, spec.model_as(SMGeoModelSpec), spec.resources, checkpoint)
        fetch = PreparedImages(prepared).fetch
        (with_click, click_zeroed), wh = predict(test, (True, False), fetch)
        report = {METHODS[0]: _report(test, with_click, wh), METHODS[1]: _report(test, click_zeroed, wh)}
        train = localization_rows(prepared, "train")
        centre = centre_box_baseline(np.array(train["box"].to_pylist()), reference_sizes(train), wh)
        report[METHODS[2]] = _report(test, centre, wh)
        (on_val,), val_wh = predict(val, (True,), fetch)
        report[VALIDATION] = _report(val, on_val, val_wh)
        return report

    def serve_deployments(self) -> dict[str, Any]:
        from geomoe.families.smgeo.serving import Localizer

        return {"Localizer": Localizer}

    def metrics(self, result: dict[str, Any]) -> dict[str, float]:
        typed = SMGeoResult.of(result)
        return {f"test_{k}": v for k, v in typed.test[METHODS[0]].overall.items()} | typed.validation

    def query_sets(self, result: dict[str, Any]) -> dict[str, str]:
        test = SMGeoResult.of(result).test
        names = {"smgeo": TEST_NAMES, VALIDATION: VAL_NAMES}
        return {
            metric: query_set
            for split, renamed in names.items()
            if split in test and (query_set := test[split].query_set) is not None
            for metric in renamed.values()
        }

    def query_values(self, result: dict[str, Any]) -> dict[str, np.ndarray]:
        """Each test sample's (test_*) and validation sample's (val_*) hit and IoU, as ``metrics`` names them."""
        test, values = SMGeoResult.of(result).test, {}
        for split, names in (("smgeo", TEST_NAMES), (VALIDATION, VAL_NAMES)):
            if split in test and test[split].iou is not None:
                values.update({names[k]: v for k, v in test[split].values().items()})
        return values

    def report(self, spec: JobSpec, results: dict[str, Any]) -> str:
        return localization_table(SMGeoResult.of(results["model"]), our_choices(spec.model_as(SMGeoModelSpec)))


def reference_sizes(rows: pa.Table) -> np.ndarray:
    """(N, 2) the reference images' (width, height), as prepare recorded them (from a dataset prepared before it
    did: each image's header, one request each)."""
    if "reference_width" in rows.column_names:
        return np.stack([rows["reference_width"].to_numpy(), rows["reference_height"].to_numpy()], 1).astype(float)
    return np.array([image_size(p) for p in rows["reference_path"].to_pylist()], np.float64)


def _predict(
    m: SMGeoModelSpec,
    res: ResourcesSpec,
    checkpoint: str,
    table: pa.Table,
    clicks: tuple[bool, ...],
    fetch: Fetch | None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Boxes (file pixels) of ``table``'s samples in its row order, one (N, 4) array per entry of ``clicks`` (False:
    the click zeroed), and their reference sizes; each sample decoded once."""
    from geomoe.families.smgeo.pipelines import pairs_dataset, predict_boxes

    pairs = pairs_dataset(table, m.query_size, m.reference_size, True, fetch)
    predicted = predict_boxes(checkpoint, pairs, clicks, res.data_concurrency, res.use_gpu)
    ids = [str(i) for i in table["sample_id"].to_pylist()]
    boxes = [np.stack([predicted[i][0][n] for i in ids]) for n in range(len(clicks))]
    return boxes, np.stack([predicted[i][1] for i in ids])


def _report(table: pa.Table, pred: np.ndarray, wh: np.ndarray) -> dict[str, Any]:
    """The DetGeo report of ``pred`` on ``table``'s samples, with the fingerprint of which samples they are."""
    boxes, classes = np.array(table["box"].to_pylist()), table["class_name"].to_pylist()
    samples = query_set([str(i) for i in table["sample_id"].to_pylist()])
    return localization_report(pred, boxes, wh, classes) | {"query_set": samples}


def our_choices(model: SMGeoModelSpec) -> list[str]:
    """Where this model departs from the paper's design (docs/guide.md: deviations), for the report's label."""
    g = model.gmoe
    choices = []
    if model.click == "channel":
        choices.append("the click as a 4th input channel (the authors' code; the paper encodes it as a prompt)")
    if model.query_pool == "click":
        choices.append("click-weighted query pooling (ours; the paper averages)")
    if g.routers == "shared":
        choices.append("one router for both views (ours; the paper's are per view)")
    if g.dense_path:  # the paper's text: the experts replace the FFN; its Table II's #P fits a kept FFN
        choices.append("dense FFN kept beside the experts (ours, to match Table II's #P; the paper's text replaces it)")
    return choices


def localization_table(result: SMGeoResult, choices: list[str] | None = None) -> str:
    """SMGeo against its two baselines on the test split (each number with its 95% bootstrap interval over the
    samples), the paired differences, plus per-class and per-size acc@0.25."""
    test = result.test
    lines = [
        f"object localization, test split, DetGeo protocol (%, [95% bootstrap interval]), "
        f"{test['smgeo'].count} samples",
        *(f"  design: {choice}" for choice in choices or []),
        f"  {'method':<16}{'acc@0.25':>19}{'acc@0.5':>19}{'mIoU':>19}",
    ]
    for name in METHODS:
        report = test[name]
        numbers = [format_interval(report.overall[k], report.interval.get(k)) for k in ("acc@0.25", "acc@0.5", "mIoU")]
        lines.append(f"  {name:<16}" + "".join(f" {number:>18}" for number in numbers))
    lines += _differences(test)
    lines.append(f"  best epoch {result.best_epoch} (validation acc@0.5 {result.validation['val_acc50']:.2f})")
    for group, cells_by_group in (("by_size", test["smgeo"].by_size), ("by_class", test["smgeo"].by_class)):
        cells = [f"{k} {v['acc@0.25']:.1f} (n={v['count']})" for k, v in cells_by_group.items()]
        lines.append(f"  smgeo acc@0.25 {group.replace('_', ' ')}: " + ", ".join(cells))
    return "\n".join(lines)


def _differences(test: dict[str, Localization]) -> list[str]:
    """SMGeo minus each baseline on the same samples (paired bootstrap); * when the interval excludes 0."""
    if any(test[name].iou is None for name in METHODS) or len({test[n].query_set for n in METHODS}) != 1:
        return []
    ours = test["smgeo"].values()
    lines = ["  paired differences (95% interval; * = excludes 0):"]
    for name in METHODS[1:]:
        other = test[name].values()
        cells = []
        for k in ("acc@0.5", "mIoU"):
            d = paired_difference(ours[k], other[k])
            cells.append(f"{k} {d}{' *' if d.significant else ''}")
        lines.append(f"  {'smgeo - ' + name:<24}" + "   ".join(cells))
    return lines


FAMILY = SMGeoFamily()
