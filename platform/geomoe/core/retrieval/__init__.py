"""Retrieval (core, no Ray): embedding with a trained model, hard-negative mining, fused search."""
