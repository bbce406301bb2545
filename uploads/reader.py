"""One streaming pass over a .tar.gz: entries judged by the rules as they are decompressed.

The gzip is decompressed once, by :class:`gzip.GzipFile` under a counter that stops at the
unpacked-size limit however small the headers say the entries are; :mod:`tarfile` reads
the stream in stream mode (``r|``), so it never seeks back, and its headers are capped
(:class:`_Header`) before it reads a pax or long-name header into memory.
"""

from __future__ import annotations

import gzip
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from uploads.errors import UploadRefused
from uploads.limits import Limits
from uploads.rules import Checker, Entry, Kind

Source = Path | str | BinaryIO
EXTENDED = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
            tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


class _BigHeader(Exception):
    pass


class _Header(tarfile.TarInfo):
    """A tar header whose pax or GNU long-name extension is refused past ``max_bytes``
    before :mod:`tarfile` reads it whole (``_proc_member`` is its documented hook)."""

    max_bytes = 64 * 1024

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in EXTENDED and self.size > self.max_bytes:
            raise _BigHeader(self.size)
        return super()._proc_member(tar)


YIELD_SHIFT = 22  # 4 MiB


class _Counted:
    """The decompressed tar stream, counted as :mod:`tarfile` reads it."""

    def __init__(self, raw: BinaryIO, checker: Checker) -> None:
        self.raw = raw
        self.checker = checker
        self.read_bytes = 0
        self.current = "(the first entry)"

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        before = self.read_bytes
        self.read_bytes += len(data)
        if self.read_bytes > self.checker.limits.max_bytes:
            raise self.checker.too_big(self.current)
        if before >> YIELD_SHIFT != self.read_bytes >> YIELD_SHIFT:
            # Decompressing is CPU work that never waits: in the controller's gevent
            # workers, let the worker's other requests run every few MB (elsewhere a no-op).
            time.sleep(0)
        return data


class _Data:
    """A regular file's content; a stream that breaks off is refused like a bad header."""

    def __init__(self, file: BinaryIO, reader: Reader) -> None:
        self.file = file
        self.reader = reader

    def read(self, size: int = -1) -> bytes:
        try:
            return self.file.read(size)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise self.reader.unreadable(e) from e


@contextmanager
def _binary(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            yield f
    else:
        yield source


class Reader:
    """Iterates ``(entry, data)`` of a .tar.gz, every entry admitted by ``checker``; ``data``
    is the file's content for regular files (read it before the next entry), else None.
    After the last entry, the links are judged and :attr:`symlinks` holds them."""

    def __init__(self, source: Source, checker: Checker,
                 extra: Iterable[tuple[str, int, int]] = ()) -> None:
        self.source = source
        self.checker = checker
        self.extra = extra
        self.symlinks: list[Entry] = []
        self.read_bytes = 0
        self.counted: _Counted | None = None

    def __iter__(self) -> Iterator[tuple[Entry, BinaryIO | None]]:
        checker = self.checker
        header = type("_Header", (_Header,), {"max_bytes": checker.limits.max_header_bytes})
        with _binary(self.source) as raw:
            counted = self.counted = _Counted(gzip.GzipFile(fileobj=raw, mode="rb"), checker)
            try:
                with tarfile.open(fileobj=counted, mode="r|", tarinfo=header) as tar:
                    while (member := tar.next()) is not None:
                        tar.members.clear()  # stream mode would keep every header
                        counted.current = member.name
                        entry = checker.admit(member)
                        if entry is not None:
                            data = None
                            if entry.kind is Kind.FILE:
                                data = _Data(tar.extractfile(member), self)
                            yield entry, data
            except _BigHeader as e:
                raise checker.refuse(
                    counted.current, f"is followed by an extended tar header of {e.args[0]} "
                    f"bytes (at most {checker.limits.max_header_bytes})",
                    "pack it again with a standard tar") from None
            except (tarfile.TarError, EOFError, OSError, zlib.error, RecursionError) as e:
                raise self.unreadable(e) from e
            finally:
                self.read_bytes = counted.read_bytes
        for name, mode, size in self.extra:
            checker.admit_file(name, mode, size)
        self.symlinks = checker.finish()

    def unreadable(self, error: BaseException) -> UploadRefused:
        near = self.counted.current if self.counted else "(the start)"
        return UploadRefused(
            f"the uploaded {self.checker.what} is not a readable .tar.gz (near {near!r}: "
            f"{error}): pack it again with the paas CLI or tar -czf.")


@dataclass(frozen=True)
class Summary:
    entries: int  # every entry, the top folder and resource-cache files included
    unpacked_bytes: int  # decompressed bytes read
    kinds: dict[str, Kind] = field(repr=False)


def check(source: Source, limits: Limits | None = None, what: str = "package",
          extra: Iterable[tuple[str, int, int]] = ()) -> Summary:
    """Judge a whole upload without writing anything; ``extra`` are files (name, mode,
    size) that join it from elsewhere. Returns what it holds, or raises UploadRefused."""
    checker = Checker(limits, what)
    reader = Reader(source, checker, extra)
    for _entry, _data in reader:
        pass  # unread data is decompressed (and counted) as tarfile skips it
    return Summary(checker.entries, reader.read_bytes, checker.kinds)
