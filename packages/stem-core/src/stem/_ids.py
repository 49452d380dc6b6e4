"""Task ids that sort by creation time (UUID version 7, RFC 9562).

Random ids (uuid4) land all over every index keyed by id, so each insert touches a
different page; on SQLite that made the drain slow down as results piled up. Ids
that start with the time land at the end of the index instead.
"""

from __future__ import annotations

import os
import time

__all__ = ["new_task_id"]


def new_task_id() -> str:
    """A UUIDv7 string: 48 bits of Unix milliseconds, then 74 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are kept
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    h = f"{value:032x}"  # what str(uuid.UUID(int=value)) gives, without building one
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
