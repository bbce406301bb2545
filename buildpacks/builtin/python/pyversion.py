"""The Python version an app asks for (``runtime.txt`` or ``.python-version``), checked against
the stack's. Pure apart from reading the two files; standard library only (it runs in the
staging container).

    runtime.txt       python-3.11.6, python-3.11, 3.11.6
    .python-version   3.11, 3.11.6, python-3.11 (pyenv's form; the first version line counts)

A major.minor match with the stack's Python is accepted (the stack has one Python per line);
anything else is refused at once, naming both versions.
"""

from __future__ import annotations

import os
import re

FILES = ("runtime.txt", ".python-version")
_VERSION = re.compile(r"^(?:python-?|cpython-?)?(\d+)\.(\d+)(?:\.(\d+))?$", re.IGNORECASE)


class VersionError(Exception):
    """A sentence for the pusher: what the app asked for and what to do."""


class Requested:
    def __init__(self, source: str, text: str, major: int, minor: int,
                 patch: int | None) -> None:
        self.source, self.text = source, text
        self.major, self.minor, self.patch = major, minor, patch

    @property
    def line(self) -> str:
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return self.line + (f".{self.patch}" if self.patch is not None else "")


def parse(text: str, source: str) -> Requested | None:
    """The version in a runtime.txt / .python-version text; None when it names none."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _VERSION.match(line)
        if not match:
            raise VersionError(
                f"{source} says {line!r}, which is not a Python version this platform reads: "
                "write e.g. " + ("'python-3.11'" if source == "runtime.txt" else "'3.11'")
                + " and push again.")
        major, minor, patch = match.groups()
        return Requested(source, line, int(major), int(minor),
                         int(patch) if patch is not None else None)
    return None


def requested(build: str) -> Requested | None:
    """runtime.txt first, then .python-version (the first that names a version)."""
    for name in FILES:
        path = os.path.join(build, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                found = parse(f.read(), name)
            if found:
                return found
    return None


def check(wanted: Requested | None, available: tuple[int, int, int]) -> str:
    """A line saying which Python the app gets; VersionError when the stack cannot give it."""
    have = ".".join(map(str, available))
    if wanted is None:
        return f"Python {have} (the stack's; pin it with runtime.txt or .python-version)"
    if (wanted.major, wanted.minor) != tuple(available[:2]):
        raise VersionError(
            f"this app asks for Python {wanted} ({wanted.source}) but the stack provides only "
            f"Python {have}: change {wanted.source} to "
            + (f"python-{available[0]}.{available[1]}" if wanted.source == "runtime.txt"
               else f"{available[0]}.{available[1]}")
            + " (or remove it) and push again.")
    if wanted.patch is not None and wanted.patch != available[2]:
        return (f"Python {have} ({wanted.source} asks for {wanted}: the same "
                f"{wanted.line} line, accepted)")
    return f"Python {have} ({wanted.source} asks for {wanted})"
