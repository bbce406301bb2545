"""The resource cache: app files by sha1, per team, so a re-push uploads only what changed.

The CLI asks which of its large files the cache has (``match``), uploads the rest, and lists
the matched ones with their paths; :func:`assemble` rebuilds the whole package from both.
Per team, so one team cannot learn from the cache what files another team has.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from contracts.blobstore import resource, team_resources
from contracts.messages import RESOURCE_MIN_BYTES
from controller.blobstore import Blobstore
from controller.errors import InvalidInput

SHA1 = re.compile(r"^[0-9a-f]{40}$")
RESOURCE_MIN = RESOURCE_MIN_BYTES
MAX_MATCH = 100_000


def match(blobs: Blobstore, team_id: int, items: Any) -> list[dict[str, Any]]:
    """The items (``{"sha1", "size"}``) whose content the team's cache holds."""
    if not isinstance(items, list) or len(items) > MAX_MATCH:
        raise InvalidInput(f"resources must be a list of at most {MAX_MATCH} "
                           "{sha1, size} objects.")
    found = []
    for item in items:
        if not isinstance(item, dict) or not SHA1.match(str(item.get("sha1", ""))):
            raise InvalidInput("each resource needs a 40-hex-digit sha1.")
        path = blobs.path(resource(team_id, item["sha1"]))
        if path.is_file() and path.stat().st_size == item.get("size"):
            found.append({"sha1": item["sha1"], "size": item["size"]})
    return found


def cached_size(blobs: Blobstore, team_id: int, sha1: str) -> int:
    """The size of the team's cached copy of ``sha1`` (0 if it has none)."""
    try:
        return blobs.path(resource(team_id, sha1)).stat().st_size
    except OSError:
        return 0


def parse_matched(raw: str | None) -> list[dict[str, Any]]:
    if not raw:
        return []
    import json

    try:
        items = json.loads(raw)
    except ValueError as e:
        raise InvalidInput(f"the resources list is not valid JSON: {e}.") from e
    if not isinstance(items, list):
        raise InvalidInput("the resources list must be a JSON list.")
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("path"), str)
                and SHA1.match(str(item.get("sha1", ""))) and isinstance(item.get("mode"), int)):
            raise InvalidInput("each matched resource needs a path, a sha1 and a mode.")
        _check_path(item["path"])
    return items


def _check_path(name: str) -> None:
    normal = posixpath.normpath(name)
    if name.startswith("/") or normal in ("..", ".") or normal.startswith("../"):
        raise InvalidInput(f"the resource {name!r} points outside the app folder.")


def assemble(blobs: Blobstore, team_id: int, upload: Path, matched: list[dict[str, Any]],
             target: str) -> tuple[str, int]:
    """Write the full package to ``target``: the uploaded entries plus the matched files.

    Large uploaded files go into the cache for the next push. Returns digest and size.
    """
    seen: set[str] = set()
    blobs.path(target).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=blobs.path(target).parent, prefix=".assemble-")
    os.close(fd)
    try:
        with tarfile.open(upload, "r:gz") as src, tarfile.open(tmp, "w:gz",
                                                                compresslevel=3) as out:
            for member in src:
                seen.add(posixpath.normpath(member.name))
                data = src.extractfile(member) if member.isfile() else None
                if data is not None and member.size >= RESOURCE_MIN:
                    cached = _remember(blobs, team_id, data)
                    with cached.open("rb") as f:
                        out.addfile(member, f)
                else:
                    out.addfile(member, data)
            for item in matched:
                name = posixpath.normpath(item["path"])
                if name in seen:
                    raise InvalidInput(f"the file {item['path']!r} was both uploaded and "
                                       "matched: push again.")
                seen.add(name)
                path = blobs.path(resource(team_id, item["sha1"]))
                if not path.is_file():
                    raise InvalidInput(f"the cached copy of {item['path']!r} is gone: "
                                       "push again.")
                info = tarfile.TarInfo(name)
                info.size, info.mode = path.stat().st_size, item["mode"] & 0o7777
                with path.open("rb") as f:
                    out.addfile(info, f)
        with open(tmp, "rb") as f:
            digest, size = blobs.put_stream(target, f)
    finally:
        os.unlink(tmp)
    return digest, size


def _remember(blobs: Blobstore, team_id: int, data: BinaryIO) -> Path:
    """Copy a file into the team's cache (streamed, hashed on the way); return its path."""
    folder = blobs.path(team_resources(team_id))
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(usedforsecurity=False)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as f:
            while chunk := data.read(1024 * 1024):
                digest.update(chunk)
                f.write(chunk)
        target = blobs.path(resource(team_id, digest.hexdigest()))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    return target
