"""RTR lines: nginx's access datagrams parsed and given to the app whose instance answered."""

from __future__ import annotations

from contracts.applog import RTR
from contracts.messages import Route
from router.accesslog import (
    AccessEntry,
    AccessLogListener,
    app_line,
    last_upstream,
    parse_access_line,
    routes_by_backend,
)

HEADER = b"<190>Nov 29 20:02:53 paas: "


def datagram(upstream: str = "127.0.0.1:61001", path: str = "/p?q=1",
             request_id: str = "abc.1") -> bytes:
    fields = ["1795982573.992", "GET", path, "200", "228", "0.005", upstream, request_id,
              "myapp.localhost"]
    return HEADER + "\t".join(fields).encode()


def route(backend: str, app_guid: str = "guid-1", index: int = 2) -> Route:
    return Route(host="myapp.localhost", backend=backend, app_name="myapp", instance_guid="i",
                 index=index, app_guid=app_guid)


def test_a_datagram_from_nginx_is_parsed() -> None:
    assert parse_access_line(datagram()) == AccessEntry(
        t=1795982573.992, method="GET", path="/p?q=1", status=200, bytes_sent=228,
        duration_ms=5, upstream="127.0.0.1:61001", request_id="abc.1", host="myapp.localhost")


def test_anything_else_is_not_an_entry() -> None:
    assert parse_access_line(b"") is None
    assert parse_access_line(b"GET / 200") is None
    assert parse_access_line(HEADER + b"1\tGET\t/") is None  # too few fields
    assert parse_access_line(datagram().replace(b"\t200\t", b"\tOK\t")) is None
    assert parse_access_line(datagram().replace(b"paas: ", b"other: ")) is None


def test_the_last_upstream_tried_is_the_one_that_answered() -> None:
    assert last_upstream("127.0.0.1:1") == "127.0.0.1:1"
    assert last_upstream("127.0.0.1:1, 127.0.0.1:2") == "127.0.0.1:2"
    assert last_upstream("127.0.0.1:1, 127.0.0.1:2 : 127.0.0.1:3") == "127.0.0.1:3"
    assert last_upstream("[::1]:80") == "[::1]:80"
    assert last_upstream("-") == ""
    assert last_upstream("") == ""


def test_the_line_goes_to_the_app_of_the_instance_that_answered() -> None:
    backends = routes_by_backend([route("127.0.0.1:61001"), route("127.0.0.1:61002", "g2", 0)])
    guid, line = app_line(datagram(upstream="127.0.0.1:61009, 127.0.0.1:61001"), backends)
    assert guid == "guid-1"
    assert line.src == RTR and line.idx == "2" and line.t == 1795982573.992
    assert line.line == ("GET /p?q=1 200 228 bytes 5 ms instance 2 request-id abc.1 "
                         "host myapp.localhost")
    assert line.format().endswith("[RTR] " + line.line)


def test_no_upstream_or_an_unknown_one_gives_no_line() -> None:
    backends = routes_by_backend([route("127.0.0.1:61001")])
    assert app_line(datagram(upstream="-"), backends) is None
    assert app_line(datagram(upstream="127.0.0.1:5"), backends) is None
    assert app_line(b"junk", backends) is None
    # A route without an app guid (an agent of an older version) has no stream to go to.
    assert routes_by_backend([route("127.0.0.1:61001", app_guid="")]) == {}


class FakeWriter:
    def __init__(self) -> None:
        self.lines: list[tuple[str, object]] = []

    def add(self, app_guid: str, line: object) -> bool:
        self.lines.append((app_guid, line))
        return True


def test_the_listener_maps_with_the_routes_nginx_serves() -> None:
    writer = FakeWriter()
    listener = AccessLogListener(writer)  # type: ignore[arg-type]
    try:
        assert 0 < listener.port < 65536
        listener.receive(datagram())
        assert writer.lines == []  # no routes yet
        listener.set_routes([route("127.0.0.1:61001")])
        listener.receive(datagram())
        [(guid, line)] = writer.lines
        assert guid == "guid-1" and "GET /p?q=1 200" in line.line  # type: ignore[attr-defined]
    finally:
        listener.stop()


class BatchWriter(FakeWriter):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[int] = []
        self.pending = 0

    def add(self, app_guid: str, line: object) -> bool:
        self.pending += 1
        return super().add(app_guid, line)

    def full(self) -> bool:
        return False

    def flush(self) -> int:
        if self.pending:
            self.flushed.append(self.pending)
        n, self.pending = self.pending, 0
        return n


def test_datagrams_sent_over_udp_are_written_in_batches() -> None:
    import socket
    import time

    writer = BatchWriter()
    listener = AccessLogListener(writer)  # type: ignore[arg-type]
    listener.set_routes([route("127.0.0.1:61001")])
    listener.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(50):
                s.sendto(datagram(), ("127.0.0.1", listener.port))
        deadline = time.monotonic() + 3
        while sum(writer.flushed) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        listener.stop()
    assert sum(writer.flushed) == 50
    assert len(writer.flushed) < 50  # batched, not one write per line
