"""Unpack a checked upload with calls that never follow a link.

Every folder is opened relative to its parent's descriptor with ``O_NOFOLLOW|O_DIRECTORY``,
every file created relative to its folder's descriptor with ``O_CREAT|O_EXCL|O_NOFOLLOW``,
hard links are made between descriptors without following, and symlinks are created last,
after every file and folder, so no write ever passes through one. Modes are 0o755 or 0o644
whatever the upload says. The rules (:mod:`uploads.rules`) refuse escapes first; this is the
second wall, and it stands even where :mod:`tarfile`'s extraction filters are broken (they
are not used).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from uploads.limits import Limits
from uploads.reader import Reader, Source, Summary
from uploads.rules import Checker, Kind

CHUNK = 1024 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Folders:
    """Descriptors of the tree's folders by relative name, made on first use; the most
    recently used few stay open."""

    KEEP = 64

    def __init__(self, root: Path, checker: Checker) -> None:
        self.checker = checker
        self.root = os.open(root, DIR_FLAGS)
        self.open: OrderedDict[str, int] = OrderedDict()

    def fd(self, name: str) -> int:
        """The folder ``name`` ("" for the top), made if missing; never through a link."""
        if not name:
            return self.root
        fd = self.open.get(name)
        if fd is not None:
            self.open.move_to_end(name)
            return fd
        parent, _, base = name.rpartition("/")
        parent_fd = self.fd(parent)
        try:
            os.mkdir(base, 0o755, dir_fd=parent_fd)
        except FileExistsError:
            pass
        try:
            fd = os.open(base, DIR_FLAGS, dir_fd=parent_fd)
        except OSError as e:  # a link or a file where a folder belongs
            raise self.checker.refuse(name, f"cannot be made a folder ({e.strerror})") from e
        os.fchmod(fd, 0o755)
        self.open[name] = fd
        if len(self.open) > self.KEEP:
            os.close(self.open.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self.open.values():
            os.close(fd)
        self.open.clear()
        os.close(self.root)


def extract(source: Source, target: Path, limits: Limits | None = None,
            what: str = "package") -> Summary:
    """Unpack the .tar.gz ``source`` into the existing folder ``target`` in one pass.

    Raises UploadRefused (with a sentence naming the entry) on anything the rules refuse or
    that would have to pass through a link; what was written stays inside ``target``, which
    the caller removes.
    """
    checker = Checker(limits, what)
    reader = Reader(source, checker)
    folders = _Folders(Path(target), checker)
    try:
        for entry, data in reader:
            parent, _, base = entry.name.rpartition("/")
            if entry.kind is Kind.DIR:
                folders.fd(entry.name)
            elif entry.kind is Kind.FILE:
                _write(checker, folders.fd(parent), entry.name, base, data, entry.mode,
                       entry.mtime)
            elif entry.kind is Kind.HARDLINK:
                source_parent, _, source_base = entry.link.rpartition("/")
                source_fd = folders.fd(source_parent)
                try:
                    os.link(source_base, base, src_dir_fd=source_fd,
                            dst_dir_fd=folders.fd(parent), follow_symlinks=False)
                except OSError as e:
                    raise checker.refuse(entry.name, f"cannot be linked to {entry.link!r} "
                                                     f"({e.strerror})") from e
        for link in reader.symlinks:  # last: nothing is written after a link exists
            parent, _, base = link.name.rpartition("/")
            try:
                os.symlink(link.link, base, dir_fd=folders.fd(parent))
            except OSError as e:
                raise checker.refuse(link.name, f"cannot be made a symlink ({e.strerror})") \
                    from e
    finally:
        folders.close()
    return Summary(checker.entries, reader.read_bytes, checker.kinds)


def _write(checker: Checker, parent_fd: int, name: str, base: str, data: BinaryIO, mode: int,
           mtime: float) -> None:
    try:
        fd = os.open(base, FILE_FLAGS, 0o600, dir_fd=parent_fd)
    except OSError as e:
        raise checker.refuse(name, f"cannot be created ({e.strerror})") from e
    try:
        while chunk := data.read(CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        os.utime(fd, (mtime, mtime))
    except OSError as e:
        raise checker.refuse(name, f"could not be written ({e.strerror})",
                             "free space on the stager and push again") from e
    finally:
        os.close(fd)
