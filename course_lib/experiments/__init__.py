"""Experiments: sweeps and benchmark runners that compare methods (never imported by methods/models).
Used by the notebooks that compare methods (e.g. ``fewshot`` in 03/04, ``concept_frequency`` in 02)."""
