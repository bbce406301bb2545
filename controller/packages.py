"""Uploads at the API boundary: the rules of :mod:`uploads` (the same the stager unpacks
with), run once over the stored upload before anything else is kept; a refusal is an
InvalidInput (400) with the rule's sentence."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import uploads
from controller.errors import InvalidInput

MAX_FILES = uploads.MAX_FILES
MAX_UNPACKED_BYTES = uploads.MAX_UNPACKED_BYTES


def check_archive(path: Path, max_files: int = MAX_FILES, max_bytes: int = MAX_UNPACKED_BYTES,
                  extra: Iterable[tuple[str, int, int]] = ()) -> int:
    """The number of entries of an app package (with ``extra`` files (name, mode, size)
    from the resource cache), or InvalidInput naming the offending entry."""
    limits = uploads.Limits(max_entries=max_files, max_bytes=max_bytes)
    try:
        return uploads.check(path, limits, "package", extra).entries
    except uploads.UploadRefused as e:
        raise InvalidInput(e.message) from e


def check_buildpack(path: Path) -> None:
    """A buildpack tarball: the same rules, and a bin/compile (possibly under one top
    folder, as the stager looks for it)."""
    try:
        summary = uploads.check(path, what="buildpack")
    except uploads.UploadRefused as e:
        raise InvalidInput(e.message) from e
    if uploads.buildpack_root(summary.kinds) is None:
        raise InvalidInput("the buildpack has no bin/compile: a buildpack follows the "
                           "Heroku/Cloud Foundry contract (bin/detect, bin/compile, bin/release).")
