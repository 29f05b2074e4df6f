"""SMGeo on Ray Serve: drone image + click + satellite tile -> box, ``@serve.batch``."""

from __future__ import annotations

from typing import Any

import numpy as np

from geomoe.families.smgeo.spec import SMGeoModelSpec
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Localizer:
    """SMGeo: drone image + click + satellite tile -> xyxy box in tile pixels and its heatmap confidence."""

    def __init__(self, checkpoint: str) -> None:
        from geomoe.families.smgeo.model import load_smgeo
        from geomoe.on_ray.ray_env import worker_device

        model, spec, _ = load_smgeo(checkpoint)
        self.device = worker_device()
        self.model = model.to(self.device)
        self.checkpoint = checkpoint
        self.query_size, self.reference_size = (
            spec.model_as(SMGeoModelSpec).query_size,
            spec.model_as(SMGeoModelSpec).reference_size,
        )

    async def ready(self) -> bool:
        return True  # the checkpoint is loaded in __init__

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def localize(self, requests: list[tuple[bytes, tuple[float, float], bytes]]) -> list[dict[str, Any]]:
        import torch

        from geomoe.families.smgeo.localization import decode_request, to_file_pixels
        from geomoe.families.smgeo.model import predict_input_boxes

        decoded = [decode_request(q, c, r, self.query_size, self.reference_size) for q, c, r in requests]
        query, click, reference = (
            torch.from_numpy(np.stack([d[k] for d in decoded])).to(self.device) for k in ("query", "click", "reference")
        )
        boxes, scores = predict_input_boxes(self.model, query, click, reference)
        wh = np.stack([d["reference_wh"] for d in decoded])
        return [{"box": box.tolist(), "score": float(score)}
                for box, score in zip(to_file_pixels(boxes, wh, self.reference_size), scores, strict=True)]  # fmt: skip
