"""Optimize stage: named optimizations applied in a fixed order, each reporting what it did."""

from __future__ import annotations

import logging
from typing import Any

from runtime.load import Loaded
from runtime.settings import Settings

log = logging.getLogger(__name__)


def optimize(loaded: Loaded, settings: Settings) -> dict[str, Any]:
    return {"applied": {"precision": loaded.precision}, "skipped": {}}
