"""Datasets in their real on-disk formats, canonical records, and transforms (no Ray here)."""
