"""Backbones: one interface for the course-built tiny CLIP and real open_clip models.

``load_backbone(name, pretrained=...)`` -> :class:`~course_lib.models.backbones.Backbone`
(see CONTRIBUTING.md, "Backbone interface").
"""
from course_lib.models.backbones import (  # noqa: F401
    Backbone,
    BackboneUnavailableError,
    ChecksumError,
    SONOCLIP_TINY_CFG,
    SONOCLIP_TINY_NAME,
    auto_choice,
    build_sonoclip_tiny,
    canonical_name,
    load_backbone,
    weights_cached,
)

__all__ = [
    "Backbone",
    "BackboneUnavailableError",
    "ChecksumError",
    "SONOCLIP_TINY_CFG",
    "SONOCLIP_TINY_NAME",
    "auto_choice",
    "build_sonoclip_tiny",
    "canonical_name",
    "load_backbone",
    "weights_cached",
]
