"""Per-token limits of the API: a request rate, and how many log follows stay open at once.

- **Rate**: a token bucket per caller (the bearer token, else the client's address), kept in
  each worker's memory: the check costs no network round trip on every request, and works
  while Redis is down. With ``api_workers`` workers a caller may get up to that many times
  ``api_rate_per_second`` in all; the limit is there against floods, not for accounting.
- **Follows**: a follow holds a connection for as long as its client stays, so its cap must
  hold across workers: a sorted set per token in Redis of follow id -> lease end, on Redis's
  own clock (``TIME`` in the scripts), renewed while the follow lives and removed when it ends.
  A worker that dies leaves leases that run out within ``FOLLOW_LEASE`` seconds. When Redis
  cannot be reached, follows are let through: they would fail on their own reads anyway.

Callers are named by a hash of their token, never the token (it must not sit in Redis).
Both limits answer :class:`TooManyRequests`: a 429 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis
from flask import Flask, Response, current_app, jsonify, request

from contracts.settings import Settings
from controller.errors import ControllerError

log = logging.getLogger("paas.controller")

FOLLOW_LEASE = 30.0  # seconds a follow's slot is held without a renewal
FOLLOW_RENEW_EVERY = 10.0
FOLLOW_RETRY_AFTER = 10  # a follow whose client left is noticed at its next ping (10 s)
MAX_BUCKETS = 10_000  # callers remembered per worker before the idle ones are forgotten


class TooManyRequests(ControllerError):
    """429: the caller is over a limit; ``retry_after`` whole seconds until it may try again."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)


ADDRESS_SHARE = 10  # an address may send as much as this many tokens


def caller_key() -> str:
    """Who the current request counts against: a hash of its bearer token, else its address."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        digest = hashlib.sha256(b"paas-limits:" + secret.strip().encode()).hexdigest()
        return f"token:{digest[:32]}"
    return f"addr:{request.remote_addr or '?'}"


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets per caller: ``burst`` requests at once, refilled at ``rate`` a second.

    ``clock`` is injected (monotonic seconds) so the decision can be tested without waiting.
    """

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(1, burst), clock
        self.buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """Take one request for ``key``: 0.0 if allowed, else the seconds until one is."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self.buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop the callers whose buckets have filled up again: they are as good as new."""
        refill = self.burst / self.rate
        self.buckets = {k: b for k, b in self.buckets.items() if now - b.at < refill}
        if len(self.buckets) >= MAX_BUCKETS:  # all busy: forget the longest idle half
            keep = sorted(self.buckets.items(), key=lambda kv: kv[1].at)[MAX_BUCKETS // 2:]
            self.buckets = dict(keep)

    def check(self, key: str) -> None:
        """Raise :class:`TooManyRequests` if ``key`` is over its rate."""
        wait = self.take(key)
        if wait > 0:
            who = "from this address" if key.startswith("addr:") else "with this token"
            raise TooManyRequests(
                f"too many requests {who} (more than {self.rate:g} a second, in "
                f"bursts of {self.burst}): slow down and try again in {math.ceil(wait)} s.",
                math.ceil(wait))


# KEYS[1]: the token's set of follows. ARGV: cap, lease seconds, follow id.
# Returns {1, held} when the follow got a slot, {0, held} when the cap is reached.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then
  return {0, held}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return {1, held + 1}
"""
# KEYS[1]: the token's set of follows. ARGV: lease seconds, follow id. 1 if still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local renewed = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 1)
return renewed
"""


def follows_key(caller: str) -> str:
    return f"paas:api-follows:{caller}"


class FollowLease:
    """One follow's slot: renew it while the follow runs, release it when it ends."""

    def __init__(self, client: redis.Redis | None, key: str, ident: str,
                 lease: float = FOLLOW_LEASE) -> None:
        self.client, self.key, self.ident, self.lease = client, key, ident, lease
        self.renewed = time.monotonic()

    def renew_if_due(self, every: float = FOLLOW_RENEW_EVERY) -> None:
        if self.client is None or time.monotonic() - self.renewed < every:
            return
        self.renewed = time.monotonic()
        try:
            self.client.eval(_RENEW, 1, self.key, self.lease, self.ident)
        except redis.RedisError as e:
            log.warning("could not renew log follow lease %s: %s", self.ident, e)

    def release(self) -> None:
        if self.client is None:
            return
        client, self.client = self.client, None
        try:
            client.zrem(self.key, self.ident)
        except redis.RedisError as e:
            log.warning("could not release log follow lease %s (it runs out in %g s): %s",
                        self.ident, self.lease, e)


def acquire_follow(client: redis.Redis, caller: str, cap: int,
                   lease: float = FOLLOW_LEASE) -> FollowLease:
    """A slot for one more follow of ``caller``, or :class:`TooManyRequests` past ``cap``
    (0: no cap). A Redis that cannot be reached lets the follow through, without a slot."""
    key, ident = follows_key(caller), uuid.uuid4().hex
    if cap <= 0:
        return FollowLease(None, key, ident, lease)
    try:
        got, held = client.eval(_ACQUIRE, 1, key, cap, lease, ident)
    except redis.RedisError as e:
        log.warning("could not count log follows (letting this one through): %s", e)
        return FollowLease(None, key, ident, lease)
    if not int(got):
        raise TooManyRequests(
            f"this token already follows {int(held)} log streams, the most one token may "
            f"hold open at once: stop a 'paas logs' you no longer need and try again in "
            f"{FOLLOW_RETRY_AFTER} s.", FOLLOW_RETRY_AFTER)
    return FollowLease(client, key, ident, lease)


def follow_slot() -> FollowLease:
    """:func:`acquire_follow` for the current request's caller, with the app's cap."""
    settings: Settings = current_app.config["PAAS_SETTINGS"]
    return acquire_follow(current_app.extensions["paas.redis"], caller_key(),
                          settings.api_follows_per_token)


def leased_stream(lease: FollowLease, chunks: Iterator[str],
                  mimetype: str = "application/x-ndjson") -> Response:
    """A streamed response that holds one of its caller's follow slots while it streams
    (renewed as chunks go out) and gives it back however the stream ends."""
    def renewing() -> Iterator[str]:
        for chunk in chunks:
            lease.renew_if_due()
            yield chunk

    response = Response(renewing(), mimetype=mimetype)
    response.call_on_close(lease.release)
    return response


def init_app(app: Flask) -> None:
    """Check every request against its caller's rate; answer a limit with 429 and
    ``Retry-After``. Registered before the API's own hooks, so a flood costs no query."""
    settings: Settings = app.config["PAAS_SETTINGS"]
    limiter = RateLimiter(settings.api_rate_per_second, settings.api_rate_burst)
    # Tokens are counted before they are checked, so one address sending made-up tokens
    # would get a fresh bucket each time: every address also has a bucket of its own, ten
    # tokens' worth (the users behind one proxy share it).
    per_address = RateLimiter(settings.api_rate_per_second * ADDRESS_SHARE,
                              settings.api_rate_burst * ADDRESS_SHARE)
    app.extensions["paas.ratelimit"] = limiter
    app.extensions["paas.ratelimit.address"] = per_address

    @app.before_request
    def _rate() -> None:
        per_address.check(f"addr:{request.remote_addr or '?'}")
        limiter.check(caller_key())

    @app.errorhandler(TooManyRequests)
    def _too_many(e: TooManyRequests) -> tuple[Response, int]:
        response = jsonify({"error": e.message})
        response.headers["Retry-After"] = str(e.retry_after)
        return response, 429


# -- login attempts ----------------------------------------------------------------------
# Failed logins per user name and per client address, in Redis (a guesser must not get a
# fresh allowance from each worker): a counter each, living login_window_seconds from the
# first failure. Past either cap a login is refused before its password is checked (which
# costs an argon2 hash: the cap is also what keeps logins from spending the API's CPU).

def _login_keys(username: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
    def key(kind: str, value: str) -> str:
        digest = hashlib.sha256(f"paas-login:{kind}:{value}".encode()).hexdigest()[:32]
        return f"paas:login-failures:{kind}:{digest}"

    return ((key("user", username), f"for {username!r}"),
            (key("addr", address), "from your address"))


def take_login_attempt(client: redis.Redis, settings: Settings, username: str,
                       address: str) -> None:
    """Count a login attempt against the user name and the address before its password is
    checked (so that guesses sent at once are counted at once), and refuse it with a 429 past
    either cap. :func:`forgive_login` takes a successful one back: failures are what count."""
    caps = (settings.login_failures_per_user, settings.login_failures_per_address)
    try:
        for (key, whose), cap in zip(_login_keys(username, address), caps, strict=True):
            attempts = client.incr(key)
            client.expire(key, settings.login_window_seconds, nx=True)
            if cap and attempts > cap:
                wait = client.ttl(key)
                wait = wait if isinstance(wait, int) and wait > 0 else \
                    settings.login_window_seconds
                raise TooManyRequests(f"too many failed logins {whose}: wait {wait} s and try "
                                      "again (an admin can reset a forgotten password).", wait)
    except redis.RedisError as e:  # the login still costs a slow hash: not unbounded
        log.warning("login limits not checked (Redis: %s)", e)


def forgive_login(client: redis.Redis, username: str, address: str) -> None:
    """Take back the attempt of a login that succeeded."""
    try:
        for key, _ in _login_keys(username, address):
            client.decr(key)
    except redis.RedisError as e:
        log.warning("a good login was not taken back (Redis: %s)", e)
