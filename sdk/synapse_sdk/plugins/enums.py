"""Enumerations plugin authors use in class attributes and ``config.yaml``."""

from __future__ import annotations

import logging
from enum import StrEnum

logger = logging.getLogger(__name__)

__all__ = ["PluginCategory"]


class PluginCategory(StrEnum):
    """What kind of work a plugin does; its value is what ``config.yaml``'s ``category`` holds."""

    NEURAL_NET = "neural_net"
    EXPORT = "export"
    UPLOAD = "upload"
    SMART_TOOL = "smart_tool"
    PRE_ANNOTATION = "pre_annotation"
    POST_ANNOTATION = "post_annotation"
    DATA_VALIDATION = "data_validation"
    CUSTOM = "custom"
