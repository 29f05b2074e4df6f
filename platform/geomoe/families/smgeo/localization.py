"""SMGeo samples as arrays, bbox-safe augmentation, and the DetGeo-protocol report (core: no Ray).

Coordinates: a prepared row holds the click in query pixels and the box (xyxy) in reference pixels of the
files on disk. ``decode_pair`` resizes both images to square model inputs and scales click and box with
them; predictions are scaled back to file pixels before any metric (DetGeo protocol: absolute boxes).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from geomoe.core.data.images import Fetch, decoded, decoded_or_error, open_image
from geomoe.core.metrics import clamped_iou, localization_metrics, localization_values
from geomoe.core.stats import intervals

if TYPE_CHECKING:  # torch is imported where augmentation runs: Ray Data decoding tasks never need it
    import torch

# Swin's ImageNet statistics
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# Fig. 11 of the SMGeo paper: small < 300x300 px, large > 512x512 px, on 1024-px tiles; scaled with the tile
SIZE_BUCKETS_AT_1024 = (300.0, 512.0)


def _load(path: str | io.BytesIO, size: int, data: bytes | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    # a path or URI: read through the storage layer (or ``data``, its bytes from a prepared image table),
    # ImageError naming the file; a request's bytes: checked by the ingress already (413/422 otherwise)
    if isinstance(path, str):
        image = open_image(path) if data is None else decoded_or_error(data, path)
    else:
        image = decoded(path.getvalue())
    original = image.size
    rgb = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32)
    return ((rgb / np.float32(255.0) - MEAN) / STD).transpose(2, 0, 1).copy(), original


def decode_request(
    query: bytes, click_xy: tuple[float, float], reference: bytes, query_size: int, reference_size: int
) -> dict[str, np.ndarray]:
    """Model inputs of one online request (encoded image bytes, click in query pixels): as ``decode_pair``
    without a box, so a served prediction equals the offline one for the same files."""
    query_CHW, (qw, qh) = _load(io.BytesIO(query), query_size)
    reference_CHW, (rw, rh) = _load(io.BytesIO(reference), reference_size)
    click = np.array([click_xy[0] * query_size / qw, click_xy[1] * query_size / qh], np.float32)
    return {
        "query": query_CHW,
        "reference": reference_CHW,
        "click": click,
        "reference_wh": np.array([rw, rh], np.float32),
    }


def decode_pair(
    row: dict[str, Any], query_size: int, reference_size: int, fetch: Fetch | None = None
) -> dict[str, np.ndarray]:
    """Model inputs of one prepared row: query (3, q, q), reference (3, r, r), click (2,) and box (4,) in input
    pixels, and the reference file's (width, height) for mapping predictions back. The images' bytes come from
    ``fetch`` (a prepared image table) or their paths."""
    paths = [str(row["query_path"]), str(row["reference_path"])]
    query_bytes, reference_bytes = fetch(paths) if fetch is not None else (None, None)
    query, (qw, qh) = _load(paths[0], query_size, query_bytes)
    reference, (rw, rh) = _load(paths[1], reference_size, reference_bytes)
    click = np.array([row["click_x"] * query_size / qw, row["click_y"] * query_size / qh], np.float32)
    scale = np.array([reference_size / rw, reference_size / rh] * 2, np.float32)
    return {
        "query": query,
        "reference": reference,
        "click": click,
        "box": np.asarray(row["box"], np.float32) * scale,
        "reference_wh": np.array([rw, rh], np.float32),
    }


def to_file_pixels(boxes_B4: np.ndarray, reference_wh_B2: np.ndarray, reference_size: int) -> np.ndarray:
    """Boxes in model-input pixels -> pixels of the reference files."""
    return np.asarray(boxes_B4, np.float64) * np.tile(np.asarray(reference_wh_B2, np.float64) / reference_size, 2)


def augment_pair(
    query: torch.Tensor,
    click: torch.Tensor,
    reference: torch.Tensor,
    box: torch.Tensor,
    generator: torch.Generator,
    min_crop: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-only, per sample: a joint horizontal flip (query + click, reference + box: the mirrored world
    is seen mirrored from the drone too) and a random crop of the reference that keeps the whole box, resized
    back. Never used for validation or test, so their labels never move."""
    import torch

    query, click, reference, box = query.clone(), click.clone(), reference.clone(), box.clone()
    size = reference.shape[-1]
    for i in range(query.shape[0]):
        if torch.rand((), generator=generator) < 0.5:
            query[i], reference[i] = query[i].flip(-1), reference[i].flip(-1)
            click[i, 0] = query.shape[-1] - click[i, 0]
            box[i, 0], box[i, 2] = size - box[i, 2], size - box[i, 0]
        if torch.rand((), generator=generator) < 0.5:
            reference[i], box[i] = _crop_keeping_box(reference[i], box[i], generator, min_crop)
    return query, click, reference, box


def _crop_keeping_box(
    image: torch.Tensor, box: torch.Tensor, generator: torch.Generator, min_crop: float
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch
    import torch.nn.functional as F

    size = image.shape[-1]
    side = int(size * (min_crop + (1 - min_crop) * float(torch.rand((), generator=generator))))
    lo = box.clamp(0, size)
    x_lo, x_hi = max(0, int(lo[2].ceil()) - side), min(int(lo[0].floor()), size - side)
    y_lo, y_hi = max(0, int(lo[3].ceil()) - side), min(int(lo[1].floor()), size - side)
    if side >= size or x_lo > x_hi or y_lo > y_hi:  # the box does not fit a crop this small
        return image, box
    x0 = int(torch.randint(x_lo, x_hi + 1, (), generator=generator))
    y0 = int(torch.randint(y_lo, y_hi + 1, (), generator=generator))
    crop = image[:, y0 : y0 + side, x0 : x0 + side]
    resized = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    shift = torch.tensor([x0, y0, x0, y0], dtype=box.dtype)
    return resized, (box - shift) * (size / side)


def size_bucket(boxes_N4: np.ndarray, reference_wh_N2: np.ndarray) -> np.ndarray:
    """'small' | 'medium' | 'large' by box area against Fig. 11's 300x300 and 512x512 px on a 1024-px tile."""
    boxes, wh = np.asarray(boxes_N4, np.float64), np.asarray(reference_wh_N2, np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    scale = (wh[:, 0] * wh[:, 1]) / 1024.0**2
    small, large = (t**2 * scale for t in SIZE_BUCKETS_AT_1024)
    return np.where(area < small, "small", np.where(area > large, "large", "medium"))


def localization_report(
    pred_N4: np.ndarray, gt_N4: np.ndarray, reference_wh_N2: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """acc@0.25, acc@0.5, mIoU overall (with 95% bootstrap intervals over samples, and each sample's IoU for
    paired comparisons), per class and per size bucket (file pixels, DetGeo protocol)."""
    pred, gt, wh = np.asarray(pred_N4), np.asarray(gt_N4), np.asarray(reference_wh_N2)
    labels = {"by_class": np.asarray(classes), "by_size": size_bucket(gt, wh)}
    iou = clamped_iou(pred, gt, wh)
    report: dict[str, Any] = {
        "overall": localization_metrics(pred, gt, wh),
        "interval": intervals(localization_values(iou)),
        "iou": iou.tolist(),
        "count": len(gt),
    }
    for name, label in labels.items():
        report[name] = {
            str(g): {
                **localization_metrics(pred[label == g], gt[label == g], wh[label == g]),
                "count": int((label == g).sum()),
            }
            for g in sorted(set(label.tolist()))
        }
    return report


def centre_box_baseline(train_boxes_N4: np.ndarray, train_wh_N2: np.ndarray, test_wh_M2: np.ndarray) -> np.ndarray:
    """A fixed box at each test tile's centre with the mean training box size (relative to the tile)."""
    boxes, wh = np.asarray(train_boxes_N4, np.float64), np.asarray(train_wh_N2, np.float64)
    rel_w = float(np.mean((boxes[:, 2] - boxes[:, 0]) / wh[:, 0]))
    rel_h = float(np.mean((boxes[:, 3] - boxes[:, 1]) / wh[:, 1]))
    test = np.asarray(test_wh_M2, np.float64)
    cx, cy, half_w, half_h = test[:, 0] / 2, test[:, 1] / 2, rel_w * test[:, 0] / 2, rel_h * test[:, 1] / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
