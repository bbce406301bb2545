"""The removal grace: after Redis comes back or restarts, no backend goes away for a TTL."""

from __future__ import annotations

from contracts.messages import Backend
from router.grace import RemovalGrace, backend_table, table_to_apply


def table(*ports: int) -> dict[str, Backend]:
    return backend_table(
        Backend(backend=f"127.0.0.1:{p}", app_guid=f"app{p}", app_name="app",
                instance_guid=f"g{p}")
        for p in ports
    )


def test_without_a_reconnect_the_table_is_applied_as_read() -> None:
    assert table_to_apply(table(1, 2), table(2, 3), now=100.0, reconnected_at=None,
                          period=6.0) == table(2, 3)


def test_during_the_grace_removals_wait_and_additions_do_not() -> None:
    applied = table_to_apply(table(1, 2), table(2, 3), now=105.9, reconnected_at=100.0,
                             period=6.0)
    assert applied == table(1, 2, 3)


def test_after_the_grace_the_table_is_applied_as_read() -> None:
    assert table_to_apply(table(1, 2), table(3), now=106.0, reconnected_at=100.0,
                          period=6.0) == table(3)


def test_equal_routes_count_once_and_unhashable_fields_are_fine() -> None:
    odd = Backend(backend="127.0.0.1:1", app_guid="a", app_name=["x"],  # type: ignore[arg-type]
                  instance_guid="g")
    assert len(backend_table([odd, odd])) == 1


def test_grace_starts_when_redis_answers_after_a_failure() -> None:
    grace = RemovalGrace(6.0)
    assert grace.redis_answered("r1", now=1.0) is None
    assert not grace.holding(1.0)
    grace.redis_failed()
    assert not grace.holding(5.0)  # nothing is read while Redis is away
    assert grace.redis_answered("r1", now=10.0) == "answers again"
    assert grace.holding(15.9) and not grace.holding(16.0)
    assert grace.redis_answered("r1", now=11.0) is None  # once per failure
    assert grace.reconnected_at == 10.0


def test_grace_starts_when_the_run_id_changed_between_two_reads() -> None:
    grace = RemovalGrace(6.0)
    grace.redis_answered("r1", now=1.0)
    assert grace.redis_answered("r1", now=2.0) is None
    assert grace.redis_answered("r2", now=3.0) == "restarted"
    assert grace.holding(8.9)
    assert grace.redis_answered("r3", now=8.0) == "restarted"  # a second restart: again
    assert grace.holding(13.9) and not grace.holding(14.0)


def test_an_unknown_run_id_detects_nothing() -> None:
    grace = RemovalGrace(6.0)
    assert grace.redis_answered(None, now=1.0) is None
    assert grace.redis_answered("r1", now=2.0) is None
    assert grace.redis_answered(None, now=3.0) is None
    assert grace.redis_answered("r1", now=4.0) is None
    assert not grace.holding(4.0)
