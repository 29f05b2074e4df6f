"""The Ray layer: a job's stages (``jobs``), Ray Data pipelines, Ray Train, Ray Tune sweeps (``tune``), Ray Serve,
Ray Jobs submission, KubeRay manifests and the benchmarks. Thin: the work itself is in ``geomoe.core`` and the
families."""
