"""Backbones: one interface for the course-built tiny CLIP and real open_clip models."""
