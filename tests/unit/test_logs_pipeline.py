"""The log pipeline's fast paths say what the plain ones said: the agent reading Docker's
chunked stream and json-file log (across rotations), the writer's batched rate limit, the
controller's JSON lines and the CLI's pass-through."""

from __future__ import annotations

import io
import json
import os
import random
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import logpipe
import logpipe.writer
from contracts import keys
from contracts.settings import Settings
from dea_agent import logs as agent_logs
from dea_agent.logs import LOST, Follower, frames
from logpipe import AppLogWriter, LogLine, TokenBucket, entry_json
from tests.unit.test_applog import StreamRedis, lines_of


def test_json_lines_are_what_json_dumps_made():
    for line in [LogLine(1764442862.5, logpipe.APP, 'hé "q"\t\x01 ☃ \\', "web", "12", "err"),
                 LogLine(1.0, logpipe.STG, "x"), LogLine(2.25, logpipe.APP, "y", "web", "", "out"),
                 LogLine(3.0, logpipe.API, "", "", "x", ""),
                 LogLine(1764442862.123, logpipe.RTR, "GET / 200", "", "3", ""),
                 LogLine(1764442862.9999996, logpipe.APP, "z", "worker two", "0", "out")]:
        assert json.loads(line.json("7-1")) == line.to_dict("7-1")
        assert line.json("7-1") == json.dumps(line.to_dict("7-1"))
        flat = [x for k, v in line.fields().items() for x in (k.encode(), v.encode())]
        for fields in (flat, flat[4:] + flat[:4]):  # as the writers order them, or not
            assert entry_json("7-1", fields) == (line.src, line.idx, line.json("7-1"))


def test_times_read_the_same_to_the_millisecond_on_every_path():
    line = LogLine(1764442862.123, logpipe.APP, "x", "web", "0", "out")
    assert line.to_dict()["time"] == "2025-11-29T19:01:02.123Z"  # not .122: float error
    assert LogLine(1764442862.9999996, logpipe.APP, "x").format().startswith(
        "2025-11-29T19:01:03.000Z")


def _old_entry(line: LogLine) -> list[bytes]:
    """The entry as writers made it before the three fields: t, src, proc, idx, fd, line."""
    fields = {"t": f"{line.t:.6f}", "src": line.src, "proc": line.proc, "idx": line.idx,
              "fd": line.fd, "line": line.line}
    return [x for k, v in fields.items() for x in (k.encode(), v.encode())]


def test_entries_of_the_former_six_fields_read_the_same():
    for line in [LogLine(1764442862.5, logpipe.APP, "hé", "web", "3", "err"),
                 LogLine(1764442862.25, logpipe.RTR, "GET /", "", "1", "")]:
        flat = _old_entry(line)
        assert LogLine.from_flat(flat) == line
        assert LogLine.from_fields(dict(zip(flat[0::2], flat[1::2], strict=True))) == line
        assert entry_json("7-1", flat) == (line.src, line.idx, line.json("7-1"))


def test_entries_hold_three_fields_and_keep_src_and_line_for_plain_readers():
    line = LogLine(1764442862.5, logpipe.RTR, "GET / 200", "", "3", "")
    assert line.fields() == {"src": "RTR", "meta": "1764442862.500000  3 ", "line": "GET / 200"}


def test_a_large_flush_is_written_in_pieces(monkeypatch):
    monkeypatch.setattr(logpipe.writer, "SEND_MOST", 4)
    client = StreamRedis()
    writer = AppLogWriter(client, 10_000, 4096, rate=1e9)
    sent: list[int] = []
    send = writer._send
    monkeypatch.setattr(writer, "_send", lambda key, lines: (sent.append(len(lines)),
                                                             send(key, lines)))
    writer.write("a1", [LogLine(1.0, logpipe.APP, f"n{n}", "web", "0", "out") for n in range(10)])
    assert sent == [4, 4, 2]
    assert [x.line for x in lines_of(client)] == [f"n{n}" for n in range(10)]


def test_a_full_batch_is_written_at_once_while_the_follower_reads_on(monkeypatch):
    monkeypatch.setattr(agent_logs, "FLUSH_EVERY", 30.0)  # no tick during the test
    client = StreamRedis()
    shipper = agent_logs.LogShipper(Settings(), None, client)  # type: ignore[arg-type]
    threading.Thread(target=shipper._flush_loop, daemon=True).start()
    shipper.writer.add_many("a1", [LogLine(1.0, logpipe.APP, "x", "web", "0", "out")])
    shipper.flush_soon()
    deadline = time.monotonic() + 5
    while not lines_of(client) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [x.line for x in lines_of(client)] == ["x"]


def test_entries_read_as_redis_sends_them_are_the_same_lines():
    line = LogLine(1764442862.5, logpipe.APP, "hé", "web", "3", "err")
    flat = [x for k, v in line.fields().items() for x in (k.encode(), v.encode())]
    assert LogLine.from_flat(flat) == line == LogLine.from_fields(
        {k.encode(): v.encode() for k, v in line.fields().items()})
    other_order = flat[4:] + flat[:4]  # another writer's order
    assert LogLine.from_flat(other_order) == line


def test_a_batch_takes_from_the_bucket_what_one_by_one_would():
    rnd = random.Random(7)
    one, many = TokenBucket(100, 100, 0.0), TokenBucket(100, 100, 0.0)
    now = 0.0
    for _ in range(300):
        now += rnd.random() * 0.3
        n = rnd.randrange(0, 80)
        assert many.take_many(now, n) == sum(one.take(now) for _ in range(n))
        assert abs(one.tokens - many.tokens) < 1e-9


def test_a_batch_over_the_limit_keeps_order_and_counts_what_it_dropped():
    now = [100.0]
    client = StreamRedis()
    writer = AppLogWriter(client, 10_000, 4096, rate=10, clock=lambda: now[0])
    line = LogLine(1.0, logpipe.APP, "", "web", "0", "out")
    assert writer.add_many("a1", [line._replace(line=f"n{n}") for n in range(25)]) == 10
    now[0] += 1
    assert writer.add_many("a1", [line._replace(line="later")]) == 1
    writer.flush()
    texts = [x.line for x in lines_of(client)]
    assert texts == [f"n{n}" for n in range(10)] + [
        "15 lines dropped (rate limit 10 lines/s)", "later"]


def _chunked(payload: bytes, sizes: list[int]) -> bytes:
    out, pos = [], 0
    for size in sizes:
        piece = payload[pos:pos + size]
        pos += size
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    return b"".join(out) + b"0\r\n\r\n"


def test_docker_s_chunked_stream_is_taken_apart_whatever_the_reads_return():
    frames_in = [(1 + n % 2, b"2026-11-29T19:01:02.%09dZ line %d\n" % (n, n)) for n in range(300)]
    payload = b"".join(struct.pack(">BxxxL", fd, len(p)) + p for fd, p in frames_in)
    sizes = [random.Random(1).randrange(1, 90) for _ in range(len(payload))]
    body = _chunked(payload, sizes)
    fp = io.BufferedReader(io.BytesIO(body), 7)  # small reads: chunks split anywhere
    inner = SimpleNamespace(fp=fp, chunked=True, chunk_left=None)
    response = SimpleNamespace(raw=SimpleNamespace(_fp=inner))
    got = [f for batch in frames(response) for f in batch]
    assert got == frames_in


class _Writer:
    def __init__(self) -> None:
        self.lines: list[LogLine] = []

    def add_many(self, app_guid: str, lines: list[LogLine]) -> int:
        self.lines.extend(lines)
        return len(lines)

    def set_cursor(self, *a: object) -> None:
        pass

    def full(self) -> bool:
        return False


def _entry(n: int, stream: str = "stdout", text: str | None = None) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_800_000_000 + n))
    log = f"line {n}\n" if text is None else text
    entry = {"log": log, "stream": stream, "time": f"{stamp}.5Z"}
    # As Docker writes it (compact, non-ASCII kept), but for line 1: any JSON will do.
    if n == 1:
        return json.dumps(entry).encode() + b"\n"
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def test_the_json_file_is_followed_across_rotations_and_says_when_a_file_was_missed(
        tmp_path: Path, monkeypatch):
    monkeypatch.setattr(agent_logs, "READ_PAUSE", 0.001)
    path = str(tmp_path / "c-json.log")
    with open(path, "wb") as f:
        f.write(_entry(0) + _entry(1, "stderr") + _entry(2, text='"pé\t') + _entry(3, text="t\n"))
    writer = _Writer()
    shipper = SimpleNamespace(writer=writer, settings=SimpleNamespace(agent_id="a1"),
                              flush=lambda: None)
    instance = SimpleNamespace(guid="g" * 32, app_guid="app", container_id="c" * 64,
                               process_type="web", index=0)
    follower = Follower(shipper, instance, since_ns=0)
    running = [True]
    follower._running = lambda: running[0]  # type: ignore[method-assign]
    done = threading.Thread(target=lambda: follower._follow_file(path, logpipe.DockerTime()))

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(writer.lines) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def rotate(first: int, last: int) -> None:
        os.replace(path, path + ".1")
        with open(path, "wb") as f:
            f.write(b"".join(_entry(n) for n in range(first, last)))

    done.start()
    wait_for(3)
    rotate(4, 6)  # seen: no line lost
    wait_for(5)
    monkeypatch.setattr(agent_logs, "READ_PAUSE", 0.3)  # the follower looks less often
    time.sleep(0.05)
    rotate(6, 8)  # twice before the follower looks: the file 6..7 is read from path.1,
    rotate(8, 10)  # and the note says a file may have gone unread
    monkeypatch.setattr(agent_logs, "READ_PAUSE", 0.001)
    wait_for(10)
    running[0] = False  # the container is removed
    os.remove(path)
    done.join(5)
    texts = [(x.fd, x.line) for x in writer.lines]
    assert texts[:3] == [("out", "line 0"), ("err", "line 1"), ("out", '"pé\tt')]
    assert [t for _, t in texts if t.startswith("line")][2:] == [f"line {n}" for n in range(4, 10)]
    assert [t for _, t in texts].count(LOST) == 1


def test_a_follower_past_the_cap_is_told_lines_were_skipped():
    from controller.api.logs import Filter, _lines

    client = StreamRedis()
    writer = AppLogWriter(client, max_lines=5, max_bytes=4096, rate=1e9)
    writer.write("a1", [LogLine(1.0, logpipe.APP, f"n{n}", "web", "0", "out") for n in range(20)])
    stream = keys.app_log("a1")
    kept = client.xrange(stream)
    assert len(kept) == 5
    gone = "2-0"  # a line the cap removed: a client resuming after it missed some
    out = _lines(client, stream, Filter(None, None), 10, False, True, gone, 5)
    assert json.loads(next(out)) == {"ping": True}
    said = json.loads(next(out).splitlines()[0])["text"]
    assert said.startswith("lines were skipped here") and "(5 lines)" in said
    newest = kept[-1][0].decode() if isinstance(kept[-1][0], bytes) else kept[-1][0]
    quiet = _lines(client, stream, Filter(None, None), 10, False, True, newest, 5)
    next(quiet)
    assert all("skipped" not in chunk for chunk in _take(quiet, 1))


def _take(chunks, count: int) -> list[str]:
    import itertools

    from controller.api import logs as api_logs

    api_logs.PING_EVERY, saved = 0.0, api_logs.PING_EVERY
    try:
        return list(itertools.islice(chunks, count))
    finally:
        api_logs.PING_EVERY = saved


class _Response:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def iter_content(self, chunk_size: int) -> list[bytes]:
        return self.chunks


def test_the_cli_prints_each_chunk_at_once_and_remembers_the_last_id():
    from cli.logs import _Printer

    one = LogLine(1764442862.5, logpipe.APP, "hi", "web", "1", "err").json("3-0")
    two = LogLine(1764442862.5, logpipe.APP, "ho", "web", "1", "out").json("4-0")
    ping = json.dumps({"ping": True, "id": "9-0"})
    for as_json in (True, False):
        printer = _Printer(as_json)
        printer.out = io.StringIO()
        body = f"{one}\n{two}\n".encode()
        printer.feed(_Response([body[:10], body[10:], f"{ping}\n".encode()]))
        shown = printer.out.getvalue().splitlines()
        if as_json:
            assert shown == [one, two]
        else:
            assert shown == ["2025-11-29T19:01:02.500Z [APP/WEB/1] ERR hi",
                             "2025-11-29T19:01:02.500Z [APP/WEB/1] ho"]
        assert printer.last_id == "9-0"
