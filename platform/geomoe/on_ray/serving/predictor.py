"""A family's own predictions on Ray Serve: ``POST /predict/<name>`` runs ``Family.predict`` on a checkpoint.

The family's code runs inside this shared deployment, looked up from the checkpoint's manifest (its
``model.name`` and the job's ``families:`` modules, loaded in the replica). So a family added from a ``.py`` file,
whose classes a replica could not import by name, is served without a deployment class of its own, and shared
code names no family.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ray import serve

if TYPE_CHECKING:
    from geomoe.families.base import Family


def family_of_checkpoint(checkpoint: str) -> Family:
    """The registered family a checkpoint was trained by (its plugin modules imported here first)."""
    from geomoe.core import registry
    from geomoe.core.models.checkpoint import trained_family

    name, plugins = trained_family(checkpoint)
    registry.load_plugins(plugins)
    return registry.family(name)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Predictor:
    """One checkpoint's ``Family.predict``: a JSON object of inputs -> a JSON object of outputs, or the family's
    reason why the inputs are not valid (answered as 422)."""

    def __init__(self, checkpoint: str) -> None:
        from geomoe.on_ray.ray_env import worker_device

        self.family = family_of_checkpoint(checkpoint)
        loaded = self.family.load_checkpoint(checkpoint)
        self.loaded = dataclasses.replace(loaded, model=loaded.model.to(worker_device()))

    async def ready(self) -> bool:
        return True  # the checkpoint is loaded in __init__

    def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``{"outputs": ...}``, or ``{"error": ...}`` for inputs the family refuses (a returned reason rather than a
        raised one: the ingress answers it as a 422 whatever Ray wraps an exception in). Any other exception is
        the family's bug, answered as a 500."""
        try:
            return {"outputs": self.family.predict(self.loaded, inputs)}
        except ValueError as err:
            return {"error": str(err)}
