"""An app's log stream: stored lines, and live ones, as JSON lines.

``GET /v1/apps/<name>/logs`` with

- ``recent=1``: the stored lines, the last ``lines`` (default 1000) that pass the filters;
- ``follow=1``: then every new line as it comes, without end; ``{"ping": true}`` when nothing
  came for ``PING_EVERY`` seconds, so the client knows the connection lives;
- ``after=<id>``: follow from after that entry (the ``id`` of the last line a client got):
  a client that lost its connection resumes without a gap or a repeat;
- ``source=APP,STG,...`` and ``instance=N`` filter.

Without ``recent`` or ``follow``, ``recent`` is meant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import redis
from flask import Response, current_app, request

from contracts import keys
from controller.api import v1
from controller.api.apps import find_app
from controller.auth import Permission, requires
from controller.errors import InvalidInput
from controller.ratelimit import FollowLease, follow_slot
from logpipe import API, SOURCES, LogLine, entry_json, raw_reply

PING_EVERY = 10.0
BLOCK_MS = 1000
DEFAULT_LINES = 1000
PAGE = 1000
FOLLOW_COUNT = 5000  # entries a read of a followed stream takes at most
SKIPPED = ("lines were skipped here: this client fell more than the stream's cap "
           "({cap:,} lines) behind")


class Filter:
    def __init__(self, sources: set[str] | None, instance: str | None) -> None:
        self.sources, self.instance = sources, instance

    def __call__(self, line: LogLine) -> bool:
        return self.passes(line.src, line.idx)

    def passes(self, src: str, idx: str) -> bool:
        if self.sources is not None and src not in self.sources:
            return False
        return self.instance is None or idx == self.instance


def _flag(name: str) -> bool:
    return request.args.get(name, "").lower() in ("1", "true", "yes", "on")


def _params() -> tuple[Filter, int, bool, bool, str | None]:
    args = request.args
    sources = None
    if args.get("source"):
        sources = {s.strip().upper() for s in args["source"].split(",") if s.strip()}
        unknown = sources - set(SOURCES)
        if unknown:
            raise InvalidInput(f"unknown log source {', '.join(sorted(unknown))}: "
                               f"use {', '.join(SOURCES)}.")
    instance = args.get("instance")
    if instance is not None and not instance.isdigit():
        raise InvalidInput(f"instance must be an instance index (0, 1, ...), not {instance!r}.")
    try:
        lines = int(args.get("lines", DEFAULT_LINES))
    except ValueError as e:
        raise InvalidInput("lines must be a whole number.") from e
    most = current_app.config["PAAS_SETTINGS"].log_lines_per_app + PAGE  # the cap is "~"
    if not 1 <= lines <= most:
        raise InvalidInput(f"lines must be from 1 to {most}, not {lines}.")
    after = args.get("after") or None
    if after is not None and not _is_stream_id(after):
        raise InvalidInput(f"after must be a log line id such as 1764442862123-0, not {after!r}.")
    follow, recent = _flag("follow"), _flag("recent")
    if not follow and not after:
        recent = True
    return Filter(sources, instance), lines, recent, follow, after


def _is_stream_id(text: str) -> bool:
    ms, _, seq = text.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit())


@v1.get("/apps/<name>/logs")
@requires(Permission.APP_LOGS)
def app_logs(name: str):
    app = find_app(name)  # 404 / 403 before the stream starts
    keep, lines, recent, follow, after = _params()
    client: redis.Redis = current_app.extensions["paas.redis"]
    stream = keys.app_log(app.guid)
    cap = current_app.config["PAAS_SETTINGS"].log_lines_per_app
    # A follow holds its connection while the client stays: one slot of the token's few.
    lease = follow_slot() if follow else None
    response = Response(_lines(client, stream, keep, lines, recent, follow, after, cap, lease),
                        mimetype="application/x-ndjson",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    if lease is not None:
        response.call_on_close(lease.release)  # however the stream ends, even unstarted
    return response


def _ident(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def read_after(client: redis.Redis, stream: str, last_id: str, keep: Filter,
               ) -> tuple[str, int, list[str]]:
    """(the last entry's id, how many entries came, the JSON lines of those ``keep`` passes)
    of up to ``FOLLOW_COUNT`` entries after ``last_id``, waiting up to ``BLOCK_MS`` for one
    (``last_id`` again, and none, when none came).

    The reply is read as Redis sends it and each entry made into its JSON line at once
    (redis-py would make a dict per entry, and a LogLine between costs as much again: more
    than the rest of the follow loop); other clients (test fakes) are asked through
    ``xread``.
    """
    if not isinstance(client, redis.Redis):
        replies = client.xread({stream: last_id}, block=BLOCK_MS, count=FOLLOW_COUNT) or []
        lines = [(_ident(i), LogLine.from_fields(f)) for _name, items in replies
                 for i, f in items]
        return ((lines[-1][0] if lines else last_id), len(lines),
                [line.json(i) for i, line in lines if keep(line)])
    reply = raw_reply(client, lambda conn: conn.send_command(
        "XREAD", "COUNT", FOLLOW_COUNT, "BLOCK", BLOCK_MS, "STREAMS", stream, last_id))
    if not reply:
        return last_id, 0, []
    # RESP2: [[stream, items]]; RESP3: {stream: items}
    items = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    passes = None if keep.sources is None and keep.instance is None else keep.passes
    out = []
    for entry_id, flat in items:
        src, idx, text = entry_json(entry_id.decode(), flat)
        if passes is None or passes(src, idx):
            out.append(text)
    return items[-1][0].decode(), len(items), out


def _id_key(ident: str | bytes) -> tuple[int, int]:
    ms, _, seq = _ident(ident).partition("-")
    return int(ms), int(seq or 0)


def _trimmed_past(client: redis.Redis, stream: str, last_id: str) -> bool:
    """Whether the stream's cap has removed the line after ``last_id`` already, unread: a
    client this far behind (a whole cap of lines) may have missed lines."""
    oldest = client.xrange(stream, count=1)
    return bool(oldest) and last_id != "0-0" and _id_key(oldest[0][0]) > _id_key(last_id)


def recent_lines(client: redis.Redis, stream: str, keep: Filter, count: int,
                 ) -> tuple[list[tuple[str, LogLine]], str]:
    """The last ``count`` lines that ``keep`` passes, oldest first, and the stream's last id
    ("0-0" when empty), so a follow can go on from exactly there."""
    found: list[tuple[str, LogLine]] = []
    last_id, upper = "", "+"
    while len(found) < count:
        page = client.xrevrange(stream, max=upper, min="-", count=PAGE)
        if not page:
            break
        for entry_id, fields in page:
            ident, line = _ident(entry_id), LogLine.from_fields(fields)
            last_id = last_id or ident
            if keep(line):
                found.append((ident, line))
                if len(found) == count:
                    break
        if len(page) < PAGE:
            break
        upper = f"({_ident(page[-1][0])}"
    found.reverse()
    return found, last_id or "0-0"


def _lines(client: redis.Redis, stream: str, keep: Filter, count: int, recent: bool,
           follow: bool, after: str | None, cap: int = 0,
           lease: FollowLease | None = None) -> Iterator[str]:
    if follow:
        yield json.dumps({"ping": True}) + "\n"  # headers out now: the client is connected
    last_id = after
    if recent:
        found, newest = recent_lines(client, stream, keep, count)
        for start in range(0, len(found), PAGE):
            yield "".join(line.json(ident) + "\n" for ident, line in found[start:start + PAGE])
        last_id = last_id or newest
    if not follow:
        return
    if last_id is None:
        newest = client.xrevrange(stream, count=1)
        last_id = _ident(newest[0][0]) if newest else "0-0"
    # A client that resumes, or reads a whole reply's worth behind, may be past the cap.
    last_sent, behind = time.monotonic(), after is not None
    while True:
        if lease is not None:
            lease.renew_if_due()
        out = []
        try:
            if behind and _trimmed_past(client, stream, last_id):
                out.append(LogLine(time.time(), API, SKIPPED.format(cap=cap)).json(""))
            last_id, got, lines = read_after(client, stream, last_id, keep)
        except redis.RedisError:
            # Redis restarts: the client keeps its connection and gets what comes next.
            time.sleep(1.0)
            got, lines = 0, []
        behind = got >= FOLLOW_COUNT
        out += lines
        if out:  # one chunk a reply: a busy stream is not one write a line
            last_sent = time.monotonic()
            out.append("")
            yield "\n".join(out)
        elif time.monotonic() - last_sent >= PING_EVERY:
            last_sent = time.monotonic()
            yield json.dumps({"ping": True, "id": last_id}) + "\n"
