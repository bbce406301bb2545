"""SQLite writers of one controller worker take turns on a lock that a greenlet can wait on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from controller.db import make_engine
from controller.errors import Unavailable
from controller.sqlite_writers import is_write, serialize_writers


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = serialize_writers(make_engine(f"sqlite:///{tmp_path / 'x.db'}"), wait=0.3)
    with made.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    yield made
    made.dispose()


def test_writes_are_told_from_reads() -> None:
    assert is_write("  insert into t values (1)") and is_write("UPDATE t SET n = 2")
    assert is_write("DELETE FROM t") and not is_write("SELECT * FROM t")
    assert is_write("DROP TABLE t") and is_write("alter table t add c")
    assert is_write("REPLACE INTO t")
    assert is_write("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a")
    assert not is_write("WITH a AS (SELECT 1) SELECT * FROM a")


def test_a_second_writer_waits_on_the_lock_and_is_told_the_database_is_busy(
        engine: Engine) -> None:
    with engine.connect() as first:
        first.execute(text("INSERT INTO t VALUES (1)"))  # holds the worker's turn
        with engine.connect() as second:
            second.execute(text("SELECT count(*) FROM t"))  # reads need no turn
            started = time.monotonic()
            with pytest.raises(Unavailable, match="database stayed busy"):
                second.execute(text("INSERT INTO t VALUES (2)"))
            assert time.monotonic() - started < 5  # our wait, not SQLite's 30 s one
        first.commit()


@pytest.mark.parametrize("end", ["commit", "rollback", "close"])
def test_the_turn_is_given_back_however_the_transaction_ends(engine: Engine, end: str) -> None:
    first = engine.connect()
    first.execute(text("INSERT INTO t VALUES (1)"))
    getattr(first, end)()
    if end != "close":
        first.close()
    with engine.connect() as second:
        second.execute(text("INSERT INTO t VALUES (2)"))
        second.commit()


def test_a_waiting_writer_goes_on_once_the_first_commits(engine: Engine) -> None:
    done = threading.Event()

    def second_writer() -> None:
        with engine.connect() as conn:
            conn.execute(text("INSERT INTO t VALUES (2)"))
            conn.commit()
        done.set()

    with engine.connect() as first:
        first.execute(text("INSERT INTO t VALUES (1)"))
        waiter = threading.Thread(target=second_writer)
        waiter.start()
        time.sleep(0.1)
        assert not done.is_set()
        first.commit()
    waiter.join(5)
    assert done.is_set()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 2
