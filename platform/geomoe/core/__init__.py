"""The core: typed specs, data, models, retrieval, text generation, metrics and statistics, storage and results.
Plain PyTorch / NumPy / PyArrow; it never imports Ray or ``geomoe.on_ray`` (an import-linter contract says so)."""
