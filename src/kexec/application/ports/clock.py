from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """Time source; always timezone-aware UTC."""

    def now(self) -> datetime: ...
