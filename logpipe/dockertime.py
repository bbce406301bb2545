"""Docker's log timestamps, read fast: the agent reads one per line of a container's log."""

from __future__ import annotations

import calendar
import time


class DockerTime:
    """Docker's RFC 3339 timestamps (``2026-11-29T19:01:02.123456789Z``) as nanoseconds."""

    def __init__(self) -> None:
        self._seconds: dict[bytes, int] = {}

    def ns(self, stamp: bytes) -> int:
        whole, frac = stamp[:19], stamp[20:-1]  # ...T19:01:02 . 123456789 Z
        if stamp[19:20] != b"." or stamp[-1:] != b"Z":
            whole, _, frac = stamp.rstrip(b"Z").partition(b".")
        seconds = self._seconds.get(whole)
        if seconds is None:
            seconds = calendar.timegm(time.strptime(whole.decode(), "%Y-%m-%dT%H:%M:%S"))
            if len(self._seconds) > 4096:
                self._seconds.clear()
            self._seconds[whole] = seconds
        return seconds * 1_000_000_000 + int(frac[:9].ljust(9, b"0") or 0)

    def ns_text(self, stamp: str) -> int:
        """:meth:`ns` of a timestamp as text (the json-file log has one a line)."""
        if stamp[19:20] != "." or stamp[-1:] != "Z":
            return self.ns(stamp.encode())
        seconds, frac = self._seconds.get(stamp[:19]), stamp[20:-1]
        if seconds is None:
            seconds = self._seconds[stamp[:19]] = self.ns(stamp[:19].encode() + b"Z") // 10**9
        # Docker drops a fraction's trailing zeros: "...:02.12Z" is 120 ms.
        return seconds * 1_000_000_000 + int(frac if len(frac) == 9 else frac[:9].ljust(9, "0"))
