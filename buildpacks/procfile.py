"""Procfile parsing: ``type: command`` lines; comments and blank lines are skipped."""

from __future__ import annotations

import re

LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+?)\s*$")


def parse(text: str) -> dict[str, str]:
    processes: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        if match:
            processes[match.group(1)] = match.group(2)
    return processes
