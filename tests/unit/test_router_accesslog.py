"""RTR lines: nginx's access lines read from its log file and given to the app whose instance
answered."""

from __future__ import annotations

import time
from pathlib import Path

from contracts.messages import Backend
from logpipe import RTR, AppLogWriter
from router.accesslog import (
    AccessEntry,
    AccessLogListener,
    LazyLines,
    app_line,
    app_of,
    backends_by_address,
    last_upstream,
    parse_access_line,
)
from router.render import ACCESS_LOG_FIELDS


def line(upstream: str = "127.0.0.1:61001", path: str = "/p?q=1",
         request_id: str = "abc.1") -> bytes:
    fields = {"$upstream_addr": upstream, "$msec": "1795982573.992", "$request_method": "GET",
              "$request_uri": path, "$status": "200", "$body_bytes_sent": "228",
              "$request_time": "0.005", "$paas_request_id": request_id,
              "$host": "myapp.localhost"}
    return "\t".join(fields[name] for name in ACCESS_LOG_FIELDS).encode() + b"\n"


def backend(address: str, app_guid: str = "guid-1", index: int = 2) -> Backend:
    return Backend(backend=address, app_guid=app_guid, app_name="myapp", instance_guid="i",
                   index=index)


def test_a_line_from_nginx_is_parsed() -> None:
    assert parse_access_line(line()) == AccessEntry(
        t=1795982573.992, method="GET", path="/p?q=1", status=200, bytes_sent=228,
        duration_ms=5, upstream="127.0.0.1:61001", request_id="abc.1", host="myapp.localhost")


def test_anything_else_is_not_an_entry() -> None:
    assert parse_access_line(b"") is None
    assert parse_access_line(b"GET / 200") is None
    assert parse_access_line(b"1\tGET\t/") is None  # too few fields
    assert parse_access_line(line().replace(b"\t200\t", b"\tOK\t")) is None


def test_the_last_upstream_tried_is_the_one_that_answered() -> None:
    assert last_upstream("127.0.0.1:1") == "127.0.0.1:1"
    assert last_upstream("127.0.0.1:1, 127.0.0.1:2") == "127.0.0.1:2"
    assert last_upstream("127.0.0.1:1, 127.0.0.1:2 : 127.0.0.1:3") == "127.0.0.1:3"
    assert last_upstream("[::1]:80") == "[::1]:80"
    assert last_upstream("-") == ""
    assert last_upstream("") == ""


def test_the_line_goes_to_the_app_of_the_instance_that_answered() -> None:
    backends = backends_by_address([backend("127.0.0.1:61001"),
                                    backend("127.0.0.1:61002", "g2", 0)])
    guid, rtr = app_line(line(upstream="127.0.0.1:61009, 127.0.0.1:61001"), backends)
    assert guid == "guid-1"
    assert rtr.src == RTR and rtr.idx == "2" and rtr.t == 1795982573.992
    assert rtr.line == ("GET /p?q=1 200 228 bytes 5 ms instance 2 request-id abc.1 "
                        "host myapp.localhost")
    assert rtr.format().endswith("[RTR] " + rtr.line)


def test_no_upstream_or_an_unknown_one_gives_no_line() -> None:
    backends = backends_by_address([backend("127.0.0.1:61001")])
    assert app_line(line(upstream="-"), backends) is None
    assert app_line(line(upstream="127.0.0.1:5"), backends) is None
    assert app_line(b"junk", backends) is None
    assert app_of(line(upstream="127.0.0.1:5"), backends) is None
    assert app_of(b"junk", backends) is None
    # A backend without an app guid has no stream to go to.
    assert backends_by_address([backend("127.0.0.1:61001", app_guid="")]) == {}


def test_lines_beyond_the_rate_limit_are_never_made() -> None:
    made: list[int] = []

    class Counting(LazyLines):
        def __getitem__(self, i):
            got = super().__getitem__(i)
            made.append(len(got) if isinstance(got, list) else 1)
            return got

    writer = AppLogWriter(None, max_lines=100, max_bytes=4096, rate=10.0,  # type: ignore[arg-type]
                          clock=lambda: 100.0)
    backends = backends_by_address([backend("127.0.0.1:61001")])
    items = [(line(request_id=f"r{i}"), backends["127.0.0.1:61001"]) for i in range(1000)]
    assert writer.add_many("guid-1", Counting(items)) == 10  # type: ignore[arg-type]
    assert sum(made) == 10
    kept = [x.line.split("request-id ")[1].split()[0] for x in writer.pending["guid-1"]]
    assert kept == [f"r{i}" for i in range(10)]


class FakeWriter:
    def __init__(self) -> None:
        self.lines: list[tuple[str, object]] = []
        self.flushed: list[int] = []
        self.pending = 0

    def add_many(self, app_guid: str, lines: list[object]) -> int:
        self.lines += [(app_guid, x) for x in lines]
        self.pending += len(lines)
        return len(lines)

    def flush(self) -> int:
        if self.pending:
            self.flushed.append(self.pending)
        n, self.pending = self.pending, 0
        return n


def test_the_listener_maps_with_the_backends_nginx_serves(tmp_path: Path) -> None:
    writer = FakeWriter()
    listener = AccessLogListener(writer, tmp_path / "access.log")  # type: ignore[arg-type]
    (tmp_path / "access.log").write_bytes(line())
    listener.poll()
    listener.drain()
    assert writer.lines == []  # no backends yet
    listener.set_backends([backend("127.0.0.1:61001")])
    with open(tmp_path / "access.log", "ab") as f:
        f.write(line(path="/a") + line(path="/b")[:20])  # the second is not whole yet
    listener.poll()
    listener.drain()
    [(guid, rtr)] = writer.lines
    assert guid == "guid-1" and "GET /a 200" in rtr.line  # type: ignore[attr-defined]
    with open(tmp_path / "access.log", "ab") as f:
        f.write(line(path="/b")[20:])
    listener.poll()
    listener.drain()
    assert "GET /b 200" in writer.lines[-1][1].line  # type: ignore[attr-defined]
    listener.stop()


def test_retried_requests_and_other_lines_take_the_slow_path(tmp_path: Path) -> None:
    writer = FakeWriter()
    listener = AccessLogListener(writer, tmp_path / "access.log")  # type: ignore[arg-type]
    listener.set_backends([backend("127.0.0.1:61001"), backend("127.0.0.1:61002", "g2", 0)])
    (tmp_path / "access.log").write_bytes(
        line(path="/fast")
        + line(upstream="127.0.0.1:61002, 127.0.0.1:61001", path="/retried")
        + line(upstream="127.0.0.1:61009", path="/unknown")
        + line(upstream="-", path="/none")
        + b"\n" + b"no access line\n" + b"127.0.0.1:61001\tbut too few fields\n")
    listener.poll()
    listener.drain()
    listener.stop()
    got = [(guid, rtr.line.split()[1]) for guid, rtr in writer.lines]  # type: ignore[attr-defined]
    assert sorted(got[:2]) == [("guid-1", "/fast"), ("guid-1", "/retried")]
    # A line nginx never writes (its address first, its fields wrong) is kept as it is.
    assert got[2:] == [("guid-1", "but")] and len(writer.lines) == 3


def test_lines_appended_while_following_are_written_in_batches(tmp_path: Path) -> None:
    writer = FakeWriter()
    path = tmp_path / "access.log"
    path.write_bytes(b"stale line of a previous run\n")
    listener = AccessLogListener(writer, path)  # type: ignore[arg-type]
    listener.set_backends([backend("127.0.0.1:61001")])
    listener.start()
    try:
        with open(path, "ab") as f:
            for _ in range(50):
                f.write(line())
                f.flush()
        deadline = time.monotonic() + 3
        while sum(writer.flushed) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.stop()
    assert sum(writer.flushed) == 50
    assert len(writer.flushed) < 50  # batched, not one write per line


def test_a_big_file_is_rotated_and_nothing_is_lost(tmp_path: Path) -> None:
    writer = FakeWriter()
    path = tmp_path / "access.log"
    listener = AccessLogListener(writer, path)  # type: ignore[arg-type]
    listener.rotate_bytes = 1000
    listener.rotate_drain = 0.0
    writers = []

    def reopen() -> None:  # what nginx does on SIGUSR1
        writers.append(open(path, "ab"))

    listener.reopen = reopen
    listener.set_backends([backend("127.0.0.1:61001")])
    nginx_file = open(path, "ab")
    for _ in range(20):
        nginx_file.write(line())
    nginx_file.flush()
    listener.poll()  # reads 20 lines, then renames the file and asks for a reopen
    assert writers and not (tmp_path / "access.log.old").exists()
    nginx_file.write(line())  # a worker still writing to the old file
    nginx_file.close()
    writers[0].write(line() * 3)
    writers[0].close()
    listener.poll()
    listener.poll()
    listener.drain()
    listener.stop()
    assert len(writer.lines) == 24
