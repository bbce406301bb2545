"""Instances' output files: the agent follows an instance's stdout and stderr files, resumes
where it stopped after a restart, frees what it has read, and keeps the last lines for a
crash's reason."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from contracts import keys
from contracts.settings import Settings
from dea_agent import logs as agent_logs
from dea_agent.instances import make_output_files
from dea_agent.logs import Follower, LogShipper
from tests.unit.test_applog import StreamRedis, lines_of

APP = "app-1"


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_logs, "READ_PAUSE", 0.001)
    monkeypatch.setattr(agent_logs, "IDLE_PAUSE", 0.005)
    monkeypatch.setattr(agent_logs, "FLUSH_EVERY", 0.005)


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the container runs, as the followers see it (Docker is not asked)."""
    state = [True]
    monkeypatch.setattr(Follower, "_running", lambda self: state[0])
    return state


def instance(folder: Path, guid: str = "i1") -> SimpleNamespace:
    return SimpleNamespace(guid=guid, app_guid=APP, container_id=guid * 8, process_type="web",
                           index=2, output_dir=str(folder))


def follow(folder: Path, client: StreamRedis | None = None, resume: bool = False,
           cursor: str | None = None) -> tuple[StreamRedis, LogShipper]:
    """An agent's shipper following the instance in ``folder`` (no rate limit), and the
    Redis it writes to; ``cursor``, where an agent before it had got to."""
    client = client or StreamRedis()
    if cursor is not None:
        client.hset(keys.app_log_cursors("a1"), "i1" * 8, cursor)
    ship = LogShipper(Settings(agent_id="a1"), None, client)  # type: ignore[arg-type]
    ship.writer.rate = 1e9
    ship.follow(instance(folder), resume=resume)
    return client, ship


def write(folder: Path, name: str, data: bytes) -> None:
    with open(folder / name, "ab") as f:  # as the instance's shell opened it: to append
        f.write(data)


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def texts(client: StreamRedis) -> list[tuple[str, str, str]]:
    return [(x.fd, x.idx, x.line) for x in lines_of(client, APP)]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_output_files(str(tmp_path / "i1"))
    return tmp_path / "i1"


def test_both_files_are_followed_tagged_and_lines_written_in_pieces_are_whole(
        folder: Path, running: list[bool]) -> None:
    client, ship = follow(folder)
    write(folder, "stdout", b"one\ntw")
    write(folder, "stderr", "trouble \xe2".encode("latin-1"))
    wait_for(lambda: len(texts(client)) == 1)
    write(folder, "stdout", b"o\n")
    write(folder, "stderr", b"\x98\x83 here\n")  # the rest of a snowman
    wait_for(lambda: len(texts(client)) == 3)
    assert sorted(texts(client)) == [("err", "2", "trouble ☃ here"), ("out", "2", "one"),
                                     ("out", "2", "two")]
    cursor = client.hget(keys.app_log_cursors("a1"), "i1" * 8)
    assert cursor in ("f8:17", b"f8:17")  # bytes of whole lines read, stdout:stderr
    running[0] = False  # the container ended: the last lines are read, then the follower ends
    write(folder, "stdout", b"last words\n")
    wait_for(lambda: not ship.followers)
    assert texts(client)[-1] == ("out", "2", "last words")
    assert ship.last_lines("i1") == ["one", "two", "trouble ☃ here", "last words"]


def test_a_restarted_agent_resumes_at_its_cursor_with_nothing_lost_or_doubled(
        folder: Path, running: list[bool]) -> None:
    client, first = follow(folder)
    write(folder, "stdout", b"".join(b"line %d\n" % n for n in range(5)))
    wait_for(lambda: len(texts(client)) == 5)
    first.flush()
    gone = first.followers["i1"]
    first.ended = lambda follower: None  # type: ignore[method-assign]  # no clean-up:
    gone.stopped.set()  # the agent is gone; the instance writes on
    gone.join(5)
    write(folder, "stdout", b"".join(b"line %d\n" % n for n in range(5, 8)))
    write(folder, "stderr", b"oops\n")
    follow(folder, client, resume=True)
    wait_for(lambda: len(texts(client)) == 9)
    time.sleep(0.05)
    assert [t for _, _, t in texts(client)] == [f"line {n}" for n in range(8)] + ["oops"]


def test_adopted_without_a_cursor_ships_the_last_lines_only(
        folder: Path, running: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_logs, "RESUME_TAIL", 3)
    monkeypatch.setattr(agent_logs, "RESUME_BYTES", 40)
    write(folder, "stdout", b"".join(b"earlier line %d\n" % n for n in range(10)))
    client, _ = follow(folder, resume=True)
    wait_for(lambda: len(texts(client)) >= 2)
    time.sleep(0.05)
    # 40 bytes before the end: a piece of line 7 (dropped), lines 8 and 9.
    assert [t for _, _, t in texts(client)] == ["earlier line 8", "earlier line 9"]


def test_what_was_read_is_freed_and_the_offsets_stay(
        folder: Path, running: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_logs, "FREE_EVERY", 0.01)
    monkeypatch.setattr(agent_logs, "FREE_AT", 64 * 1024)
    client, ship = follow(folder)
    block = b"".join(b"%0100d\n" % n for n in range(4000))  # 404,000 bytes
    write(folder, "stdout", block)
    wait_for(lambda: len(texts(client)) == 4000)
    path = folder / "stdout"
    wait_for(lambda: os.stat(path).st_blocks * 512 < 64 * 1024)
    assert os.stat(path).st_size == len(block)
    write(folder, "stdout", b"after the hole\n")
    wait_for(lambda: texts(client)[-1][2] == "after the hole")
    # A restarted agent reading from before the freed stretch skips its zeros.
    ship.followers["i1"].stopped.set()
    wait_for(lambda: not ship.followers)
    again, _ = follow(folder, resume=True, cursor="f0:0")
    wait_for(lambda: any(t == "after the hole" for _, _, t in texts(again)))
    assert not any("\0" in t for _, _, t in texts(again))


def test_a_file_the_app_truncates_is_read_again_from_its_start(
        folder: Path, running: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_logs, "FREE_EVERY", 0.01)
    client, ship = follow(folder)
    write(folder, "stdout", b"before\n")
    wait_for(lambda: len(texts(client)) == 1)
    with open(folder / "stdout", "wb") as f:  # open(..., "w"), as /dev/stdout might be
        f.write(b"")
    time.sleep(0.05)
    write(folder, "stdout", b"after\n")
    wait_for(lambda: len(texts(client)) == 2)
    assert [t for _, _, t in texts(client)] == ["before", "after"]


def test_a_crash_s_last_lines_wait_for_the_follower_to_read_them(
        folder: Path, running: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    client, ship = follow(folder)
    write(folder, "stdout", b"started\n")
    wait_for(lambda: len(texts(client)) == 1)
    monkeypatch.setattr(agent_logs, "IDLE_PAUSE", 0.3)  # the follower looks seldom now
    time.sleep(0.35)
    write(folder, "stderr", b"Traceback (most recent call last):\nValueError: boom\n")
    assert ship.last_lines("i1")[-1] == "ValueError: boom"
    ship.stop("i1")
    assert ship.last_lines("i1") == []


def test_a_follower_stopped_reads_what_is_left_first(folder: Path, running: list[bool]) -> None:
    client, ship = follow(folder)
    wait_for(lambda: ship.followers["i1"].is_alive())
    follower = ship.followers["i1"]
    write(folder, "stdout", b"".join(b"bye %d\n" % n for n in range(3)))
    ship.stop("i1")
    follower.join(5)
    ship.flush()
    assert [t for _, _, t in texts(client)] == ["bye 0", "bye 1", "bye 2"]
    assert not threading.enumerate().count(follower)


def test_a_last_line_without_its_newline_is_shipped_when_the_container_ends(
        folder: Path, running: list[bool]) -> None:
    client, ship = follow(folder)
    write(folder, "stderr", b"fatal: no newline")
    time.sleep(0.05)
    assert texts(client) == []  # a line is shipped whole, while it may go on
    running[0] = False
    wait_for(lambda: not ship.followers)
    assert texts(client) == [("err", "2", "fatal: no newline")]
    assert ship.last_lines("i1") == ["fatal: no newline"]


def test_a_file_made_huge_and_sparse_is_skipped_not_read(
        folder: Path, running: list[bool]) -> None:
    client, ship = follow(folder)
    write(folder, "stdout", b"before\n")
    wait_for(lambda: len(texts(client)) == 1)
    os.truncate(folder / "stdout", 1 << 40)  # 1 TiB of hole: truncate -s 1T
    write(folder, "stdout", b"after\n")
    wait_for(lambda: len(texts(client)) == 2, timeout=2)
    assert [t for _, _, t in texts(client)] == ["before", "after"]


def test_a_backlog_past_the_limit_is_skipped_with_a_note(
        folder: Path, running: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_logs, "MAX_BACKLOG", 10_000)
    monkeypatch.setattr(agent_logs, "RESUME_BYTES", 100)
    monkeypatch.setattr(agent_logs, "FREE_EVERY", 0.0)
    write(folder, "stdout", b"".join(b"backlog %05d\n" % n for n in range(2000)))  # 28 KB
    client, _ = follow(folder, resume=True, cursor="f0:0")  # down since the start
    wait_for(lambda: any(t.startswith("backlog 01999") for _, _, t in texts(client)))
    shown = [t for _, _, t in texts(client)]
    assert len(shown) < 2000
    note = [t for t in shown if t.startswith("output may have been lost here")]
    assert len(note) == 1 and "bytes of it were skipped" in note[0], shown[:3]


def test_nothing_is_freed_until_redis_has_the_lines(
        folder: Path, running: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_logs, "FREE_EVERY", 0.01)
    monkeypatch.setattr(agent_logs, "FREE_AT", 4096)
    monkeypatch.setattr(LogShipper, "_flush_loop", lambda self: None)  # a flusher stuck
    client, ship = follow(folder)
    write(folder, "stdout", (b"x" * 999 + b"\n") * 200)
    wait_for(lambda: ship.followers["i1"].read_to.get(1, 0) == 200_000)
    path = folder / "stdout"
    with open(path, "rb") as f:
        os.fsync(f.fileno())  # blocks allocated, not just reserved
    time.sleep(0.2)  # many looks
    assert os.stat(path).st_blocks * 512 >= 196 * 1024
    assert texts(client) == []
    ship.flush()
    wait_for(lambda: os.stat(path).st_blocks * 512 < 8192)
    assert len(texts(client)) == 200


def test_output_files_that_cannot_be_made_fail_the_start_with_a_sentence(tmp_path: Path) -> None:
    from contracts.messages import InstanceSpec
    from dea_agent.instances import OutputFilesError, create_container

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    settings = Settings(agent_id="a1", instance_logs_dir=str(blocked))
    spec = InstanceSpec(instance_guid="i1", app_guid="g", app_name="web-app", release=1,
                        process_type="web", index=0, image="i", command="", memory_mb=64,
                        env={}, routes=[])
    with pytest.raises(OutputFilesError) as failed:
        create_container(None, spec, settings, 61000)  # type: ignore[arg-type]  # not reached
    said = str(failed.value)
    assert said.startswith("agent a1 could not make the instance's output files in ")
    assert "PAAS_INSTANCE_LOGS_DIR" in said
