"""geomoe: cross-modal geo-localization with mixture-of-experts models, on Ray.

``geomoe.core`` never imports Ray; ``geomoe.on_ray`` is the thin Ray layer on top; ``geomoe.families`` holds one
folder per model family; ``geomoe.cli`` is the ``geomoe`` command (docs/architecture.md).
"""

__version__ = "0.1.0"
