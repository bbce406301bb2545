"""One line of an app's log stream: its fields in Redis, its JSON and its text.

Entry fields (all strings): ``src`` one of :data:`SOURCES`; ``meta`` the line's time (epoch
seconds, six decimals) and, space-separated, its process type, instance index (APP and RTR
lines) and ``out`` or ``err`` (APP lines), each empty when it does not apply, such as
``1764442862.123456 web 0 out``; ``line`` the text. Three fields, not six: every field costs
Redis and its readers work per line, and a busy app writes tens of thousands of lines a
second. (Entries of the former six fields, ``t src proc idx fd line``, read the same.)

The CLI reads lines with this module too, so it imports nothing heavier than the standard
library.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from json.encoder import encode_basestring_ascii as _json_str  # type: ignore[attr-defined]
from typing import Any, NamedTuple

APP, STG, RTR, API, HEALTH = "APP", "STG", "RTR", "API", "HEALTH"
SOURCES = (APP, STG, RTR, API, HEALTH)


class LogLine(NamedTuple):
    """One line (a tuple: a busy app makes tens of thousands a second)."""

    t: float
    src: str
    line: str
    proc: str = ""
    idx: str = ""
    fd: str = ""

    def fields(self) -> dict[str, str]:
        return {"src": self.src, "meta": f"{self.t:.6f} {self.proc} {self.idx} {self.fd}",
                "line": self.line}

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> LogLine:
        """The line of a stream entry's fields (bytes from Redis, or str)."""
        get = fields.get
        meta = get(b"meta", get("meta"))
        if meta is not None:
            if isinstance(meta, bytes):
                meta = meta.decode("utf-8", "replace")
            t, _, kind = meta.partition(" ")
            proc, idx, fd = (kind.rsplit(" ", 2) + ["", ""])[:3]
            values = [t, get(b"src", get("src", b"")), get(b"line", get("line", b"")),
                      proc, idx, fd]
        else:  # the former six fields
            values = [get(b"t", get("t", b"")), get(b"src", get("src", b"")),
                      get(b"line", get("line", b"")), get(b"proc", get("proc", b"")),
                      get(b"idx", get("idx", b"")), get(b"fd", get("fd", b""))]
        try:
            t = float(values[0] or 0)
        except ValueError:
            t = 0.0
        src, line, proc, idx, fd = (v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                                    for v in values[1:])
        return cls(t, src, line, proc, idx, fd)

    @classmethod
    def from_flat(cls, flat: list[bytes]) -> LogLine:
        """The line of a stream entry's fields as Redis sends them, names and values in
        turn, without redis-py's dict per entry."""
        if not _three_fields(flat):
            return cls.from_fields(dict(zip(flat[0::2], flat[1::2], strict=False)))
        return cls.from_fields({b"src": flat[1], b"meta": flat[3], b"line": flat[5]})

    @property
    def tag(self) -> str:
        """``APP/WEB/0``, ``STG``, ``RTR``, ..., as Cloud Foundry tags its lines."""
        if self.src == APP and self.proc:
            return "/".join(p for p in (APP, self.proc.upper(), self.idx) if p)
        return self.src

    def to_dict(self, entry_id: str = "") -> dict[str, object]:
        out: dict[str, object] = {"id": entry_id, "time": iso_time(self.t), "source": self.src,
                                  "process_type": self.proc or None,
                                  "instance": int(self.idx) if self.idx.isdigit() else None,
                                  "fd": self.fd or None, "text": self.line}
        return out

    def json(self, entry_id: str = "") -> str:
        """``json.dumps(self.to_dict(entry_id))``, made directly (the follow endpoint makes
        one per line)."""
        return (f'{{"id": {_json_str(entry_id)}, "time": "{iso_time(self.t)}", '
                f'{_json_tags(self.src, self.proc, self.idx, self.fd)}'
                f'"text": {_json_str(self.line)}}}')

    def format(self) -> str:
        """``2026-11-29T19:01:02.123Z [APP/WEB/0] text``; stderr lines read ``ERR text``."""
        err = "ERR " if self.fd == "err" else ""
        return f"{iso_time(self.t)} [{self.tag}] {err}{self.line}"


_JSON_TAGS: dict[tuple[Any, Any, Any, Any], str] = {}  # the JSON's middle, by tags


def _three_fields(flat: list[bytes]) -> bool:
    """Whether an entry as Redis sends it is the writers' ``src``, ``meta``, ``line``."""
    return len(flat) == 6 and flat[2] == b"meta" and flat[0] == b"src" and flat[4] == b"line"


# LogLine from a tuple of its six fields, without NamedTuple's Python-level __new__: the
# agent and the router make tens of thousands a second.
line_of = partial(tuple.__new__, LogLine)


def _json_tags(src: Any, proc: Any, idx: Any, fd: Any) -> str:
    """``"source": ..., "process_type": ..., "instance": ..., "fd": ..., `` of a line's JSON
    (str or bytes tags; made once per kind of line)."""
    key = (src, proc, idx, fd)
    tags = _JSON_TAGS.get(key)
    if tags is None:
        if len(_JSON_TAGS) > 4096:
            _JSON_TAGS.clear()
        src, proc, idx, fd = (x.decode("utf-8", "replace") if isinstance(x, bytes) else x
                              for x in key)
        tags = _JSON_TAGS[key] = (
            f'"source": {_json_str(src)}, '
            f'"process_type": {_json_str(proc) if proc else "null"}, '
            f'"instance": {int(idx) if idx.isdigit() else "null"}, '
            f'"fd": {_json_str(fd) if fd else "null"}, ')
    return tags


# (source, ``proc idx fd`` of the meta field) -> (source, instance index, the JSON's middle)
_KINDS: dict[tuple[bytes, bytes], tuple[str, str, str]] = {}


def _kind(src: bytes, kind: bytes) -> tuple[str, str, str]:
    found = _KINDS.get((src, kind))
    if found is None:
        if len(_KINDS) > 4096:
            _KINDS.clear()
        proc, idx, fd = (kind.decode("utf-8", "replace").rsplit(" ", 2) + ["", ""])[:3]
        source = src.decode("utf-8", "replace")
        found = _KINDS[src, kind] = (source, idx, _json_tags(source, proc, idx, fd))
    return found


def entry_json(entry_id: str, flat: list[bytes]) -> tuple[str, str, str]:
    """(source, instance index, the line's JSON as :meth:`LogLine.json` makes it) of a
    stream entry as Redis sends it (``entry_id`` is a stream id: digits and a dash).

    The follow endpoint makes one per line: an entry of the writers' three fields is made
    without a LogLine, from the pieces cached per kind of line and per millisecond."""
    if not _three_fields(flat):
        line = LogLine.from_flat(flat)
        return line.src, line.idx, line.json(entry_id)
    stamp, _, kind = flat[3].partition(b" ")
    src, idx, tags = _KINDS.get((flat[1], kind)) or _kind(flat[1], kind)
    return (src, idx,
            f'{{"id": "{entry_id}", "time": "{_ISO.get(stamp[:-3]) or _iso_stamp(stamp)}", '
            f'{tags}"text": {_json_str(flat[5].decode("utf-8", "replace"))}}}')


_SECONDS: dict[bytes, str] = {}  # b"1764442862" -> "2025-11-29T19:01:02"
_ISO: dict[bytes, str] = {}  # b"1764442862.123" -> "2025-11-29T19:01:02.123Z"


def iso_time(t: float) -> str:
    """``2026-11-29T19:01:02.123Z``: the time to the millisecond, read from its six
    decimals as a stream entry holds them (so every path shows a line at the same time)."""
    stamp = b"%.6f" % t
    return _ISO.get(stamp[:-3]) or _iso_stamp(stamp)


def _iso_stamp(stamp: bytes) -> str:
    """:func:`iso_time` of an epoch time written with six decimals (``b"%.6f" % t``),
    cached by its millisecond: the lines of a busy app share them."""
    if stamp[-7:-6] != b"." or not stamp[:-7].isdigit():  # not as the writers make it
        try:
            t = float(stamp)
        except ValueError:
            t = 0.0
        stamp = b"%.6f" % (t if 0.0 <= t < 1e11 else 0.0)  # (a year datetime can show)
    whole, frac = stamp[:-7], stamp[-6:-3]
    prefix = _SECONDS.get(whole)
    if prefix is None:
        if len(_SECONDS) > 1024:
            _SECONDS.clear()
        prefix = _SECONDS[whole] = datetime.fromtimestamp(int(whole), UTC).strftime(
            "%Y-%m-%dT%H:%M:%S")
    if len(_ISO) > 8192:
        _ISO.clear()
    iso = _ISO[stamp[:-3]] = f"{prefix}.{frac.decode()}Z"
    return iso
