"""Data worlds: SonoSynth (procedural ultrasound) and loaders for real public datasets.

All sources return samples in the schema of :mod:`course_lib.data.common`.
"""
