"""The API's limits: the per-token request rate (a token bucket per worker) and the cap of log
follows per token (leases in Redis, here a private redis-server)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests
from flask.testing import FlaskClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from cli.client import _error_message
from contracts.settings import load
from controller.admin import ensure_admin_token, migrate
from controller.app import create_app
from controller.ratelimit import RateLimiter, TooManyRequests, acquire_follow, follows_key
from launcher.sandbox import free_port
from tests.unit.fakes import FakeCelery, FakeRedis


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_requests_wait_for_the_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # one more token in half a second
    assert limiter.take("b") == 0.0  # another caller has a bucket of its own
    clock.now += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    clock.now += 60  # idle: the bucket fills up to the burst, not beyond
    assert [limiter.take("a") for _ in range(4)][-1] > 0


def test_the_sentence_says_the_rate_and_when_to_try_again() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    limiter.check("a")
    with pytest.raises(TooManyRequests) as caught:
        limiter.check("a")
    assert caught.value.status == 429 and caught.value.retry_after == 1
    assert "more than 1 a second" in caught.value.message
    assert "try again in 1 s" in caught.value.message


def test_a_zero_rate_means_no_limit() -> None:
    limiter = RateLimiter(rate=0, burst=1, clock=Clock())
    assert all(limiter.take("a") == 0.0 for _ in range(1000))


def test_callers_are_forgotten_once_their_buckets_are_full_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from controller import ratelimit

    monkeypatch.setattr(ratelimit, "MAX_BUCKETS", 10)
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=10, clock=clock)
    for i in range(10):
        limiter.take(f"old-{i}")
    clock.now += 5  # every old bucket has refilled
    limiter.take("new")
    assert list(limiter.buckets) == ["new"]
    for i in range(20):  # all busy at once: the memory stays bounded anyway
        limiter.take(f"busy-{i}")
    assert len(limiter.buckets) <= 10


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[FlaskClient, str]]:
    settings = load(env={}, data_dir=str(tmp_path), api_rate_per_second=1.0, api_rate_burst=2)
    migrate(settings)
    token = ensure_admin_token(settings)
    app = create_app(settings, TESTING=True, REDIS=FakeRedis(), CELERY=FakeCelery())
    for name in ("paas.ratelimit", "paas.ratelimit.address"):  # no refill while it runs,
        app.extensions[name].clock = lambda: 1000.0  # however slow the machine is
    yield app.test_client(), token
    app.extensions["paas.engine"].dispose()


def test_a_token_over_its_rate_gets_429_with_retry_after_and_others_go_on(
        limited: tuple[FlaskClient, str]) -> None:
    client, token = limited
    mine = {"Authorization": f"Bearer {token}"}
    assert [client.get("/v1/apps", headers=mine).status_code for _ in range(2)] == [200, 200]
    refused = client.get("/v1/apps", headers=mine)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert "too many requests with this token" in refused.json["error"]
    # Another token (even a wrong one) and the tokenless are counted apart.
    assert client.get("/v1/apps", headers={"Authorization": "Bearer other"}).status_code == 401
    assert client.get("/v1/apps").status_code == 401


def test_made_up_tokens_from_one_address_share_its_bucket(
        limited: tuple[FlaskClient, str]) -> None:
    client, _ = limited  # 1 request/s, bursts of 2: an address gets ten times that
    answers = [client.get("/v1/apps", headers={"Authorization": f"Bearer made-up-{n}"})
               for n in range(25)]
    assert [a.status_code for a in answers[:20]] == [401] * 20
    assert {a.status_code for a in answers[20:]} == {429}
    assert answers[-1].headers["Retry-After"]
    assert "too many requests from this address" in answers[-1].json["error"]


@pytest.fixture(scope="module")
def real_redis() -> Iterator[redis.Redis]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: run 'make test' (it installs what tests need).")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and server.poll() is None, "no redis-server"
            time.sleep(0.05)
    yield client
    client.close()
    server.terminate()
    server.wait(10)


def test_follows_past_the_cap_get_429_until_one_ends(real_redis: redis.Redis) -> None:
    leases = [acquire_follow(real_redis, "token:a", cap=2) for _ in range(2)]
    with pytest.raises(TooManyRequests) as caught:
        acquire_follow(real_redis, "token:a", cap=2)
    assert caught.value.retry_after == 10
    assert "already follows 2 log streams" in caught.value.message
    assert "stop a 'paas logs'" in caught.value.message
    other = acquire_follow(real_redis, "token:b", cap=2)  # other tokens are not counted
    leases[0].release()
    leases[0].release()  # twice is harmless
    leases.append(acquire_follow(real_redis, "token:a", cap=2))
    for lease in [*leases, other]:
        lease.release()
    assert real_redis.zcard(follows_key("token:a")) == 0


def test_a_follow_never_released_frees_its_slot_when_its_lease_runs_out(
        real_redis: redis.Redis) -> None:
    held = acquire_follow(real_redis, "token:c", cap=1, lease=0.3)
    with pytest.raises(TooManyRequests):
        acquire_follow(real_redis, "token:c", cap=1, lease=0.3)
    time.sleep(0.2)
    held.renew_if_due(every=0)  # a live follow keeps its slot past its first lease
    time.sleep(0.2)
    with pytest.raises(TooManyRequests):
        acquire_follow(real_redis, "token:c", cap=1, lease=0.3)
    time.sleep(0.3)  # then its worker died: nothing renews it
    acquire_follow(real_redis, "token:c", cap=1, lease=0.3).release()


def test_follows_go_on_without_a_slot_when_redis_is_down() -> None:
    gone = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    lease = acquire_follow(gone, "token:d", cap=1)
    lease.renew_if_due(every=0)
    lease.release()


def _response(status: int, body: bytes, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code, response._content = status, body
    response.headers.update(headers)
    return response


def test_the_cli_shows_a_429s_sentence_and_when_to_try_again() -> None:
    said = _error_message(_response(429, b'{"error": "too many: try again in 3 s."}',
                                     **{"Retry-After": "3"}))
    assert said == "too many: try again in 3 s."
    bare = _error_message(_response(429, b"slow down", **{"Retry-After": "7"}))
    assert "try again in 7 s" in bare and bare.startswith("429")


def test_the_controller_raises_its_open_files_limit_for_its_connections(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    from controller.serve import raise_open_files

    limits = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda _which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda _which, pair: limits.update(now=pair))
    settings = load(env={}, api_worker_connections=1000)
    assert raise_open_files(settings) == 2256 and limits["now"] == (2256, 4096)
    limits["now"] = (1024, 2000)  # the hard limit is the most it may get
    assert raise_open_files(settings) == 2000
    limits["now"] = (65536, 65536)  # enough already: left alone
    assert raise_open_files(settings) == 65536
