"""geomoe: cross-modal geo-localization with mixture-of-experts models, on Ray.

The core (config, data, metrics, models, retrieval) never imports Ray; ``geomoe.pipelines``,
``geomoe.train``, ``geomoe.sweep`` and ``geomoe.serving`` are the thin Ray layer on top.
"""

__version__ = "0.1.0"
