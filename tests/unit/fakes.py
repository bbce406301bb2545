"""Hand-written stand-ins for Redis and Celery: for unit tests only."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.published: list[tuple[str, str]] = []
        self.hashes: dict[str, dict[bytes, bytes]] = {}

    @staticmethod
    def _b(value: Any) -> bytes:
        return value if isinstance(value, bytes) else str(value).encode()

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: Any, **_: Any) -> bool:
        self.data[key] = self._b(value)
        return True

    def expire(self, key: str, seconds: int, **_: Any) -> bool:
        return key in self.data

    def incr(self, key: str, amount: int = 1) -> int:
        value = int(self.data.get(key, b"0")) + amount
        self.data[key] = self._b(value)
        return value

    def decr(self, key: str, amount: int = 1) -> int:
        return self.incr(key, -amount)

    def ttl(self, key: str) -> int:
        return 60 if key in self.data else -2

    def exists(self, key: str) -> int:
        return int(key in self.data)

    def mget(self, keys: list[str]) -> list[bytes | None]:
        return [self.data.get(k if isinstance(k, str) else k.decode()) for k in keys]

    def scan_iter(self, match: str = "*", count: int = 0) -> list[str]:
        return [k for k in self.data if fnmatch.fnmatch(k, match)]

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    def hget(self, key: str, field: str) -> bytes | None:
        return self.hashes.get(key, {}).get(self._b(field))

    def hset(self, key: str, field: str, value: Any) -> int:
        self.hashes.setdefault(key, {})[self._b(field)] = self._b(value)
        return 1

    def hdel(self, key: str, *fields: Any) -> int:
        found = self.hashes.get(key, {})
        return sum(found.pop(self._b(f), None) is not None for f in fields)

    def rename(self, src: str, dst: str) -> bool:
        import redis

        for store in (self.data, self.hashes):
            if src in store:
                store[dst] = store.pop(src)
                return True
        raise redis.ResponseError("ERR no such key")

    def delete(self, *names: str) -> int:
        return sum((self.data.pop(n, None) is not None) + (self.hashes.pop(n, None) is not None)
                   for n in names)

    def publish(self, channel: str, message: Any) -> int:
        self.published.append((channel, str(message)))
        return 0

    def xread(self, streams: dict[str, str], block: int = 0, count: int = 0) -> list:
        return []

    # Streams (app logs): entries kept in order, ids "<n>-0"; MAXLEN trims exactly.
    def xadd(self, key: str, fields: dict[str, Any], maxlen: int | None = None,
             approximate: bool = True, **_: Any) -> bytes:
        streams = self.__dict__.setdefault("streams", {})
        entries = streams.setdefault(key, [])
        self.__dict__["stream_seq"] = self.__dict__.get("stream_seq", 0) + 1
        entry_id = f"{self.__dict__['stream_seq']}-0".encode()
        entries.append((entry_id, {self._b(k): self._b(v) for k, v in fields.items()}))
        if maxlen is not None and len(entries) > maxlen:
            del entries[:len(entries) - maxlen]
        return entry_id

    def xlen(self, key: str) -> int:
        return len(self.__dict__.get("streams", {}).get(key, []))

    @staticmethod
    def _id(text: Any, default: int) -> tuple[int, bool]:
        text = text.decode() if isinstance(text, bytes) else str(text)
        if text in ("-", "+"):
            return default, False
        return int(text.lstrip("(").split("-")[0]), text.startswith("(")

    def xrevrange(self, key: str, max: str = "+", min: str = "-",
                  count: int | None = None) -> list:
        hi, hi_open = self._id(max, 1 << 62)
        lo, lo_open = self._id(min, 0)
        out = []
        for entry_id, fields in reversed(self.__dict__.get("streams", {}).get(key, [])):
            n = int(entry_id.split(b"-")[0])
            if n > hi or (hi_open and n == hi) or n < lo or (lo_open and n == lo):
                continue
            out.append((entry_id, dict(fields)))
            if count and len(out) == count:
                break
        return out

    def xrange(self, key: str, min: str = "-", max: str = "+",
               count: int | None = None) -> list:
        return list(reversed(self.xrevrange(key, max=max, min=min)))[:count or None]

    # Platform status: reachability, lock TTLs, queue (list) lengths, Celery's unacked hash.
    def eval(self, script: str, numkeys: int, *args: Any) -> Any:
        """The route table's write-if-newer script (contracts.routing) and the log follows'
        leases (controller.ratelimit: a set per token, without expiry)."""
        import json

        from contracts import routing
        from controller import ratelimit

        if script == ratelimit._ACQUIRE:
            key, cap, _lease, ident = args
            held = self.__dict__.setdefault("follows", {}).setdefault(key, set())
            if len(held) >= int(cap):
                return [0, len(held)]
            held.add(ident)
            return [1, len(held)]
        if script == ratelimit._RENEW:
            key, _lease, ident = args
            return int(ident in self.__dict__.get("follows", {}).get(key, set()))
        assert script == routing._WRITE_IF_NEWER and numkeys == 2, "unknown script"
        key, channel, revision, doc = args
        stored = self.data.get(key)
        if stored is not None and json.loads(stored)["revision"] > int(revision):
            return 0
        self.data[key] = self._b(doc)
        self.publish(channel, "route-table")
        return 1

    def zrem(self, key: str, *members: str) -> int:
        held = self.__dict__.get("follows", {}).get(key, set())
        gone = [m for m in members if m in held]
        held.difference_update(gone)
        scored = self.__dict__.get("zsets", {}).get(key, {})
        return len(gone) + sum(scored.pop(m, None) is not None for m in members)

    def zadd(self, key: str, mapping: dict[str, float]) -> int:
        scored = self.__dict__.setdefault("zsets", {}).setdefault(key, {})
        new = len(set(mapping) - set(scored))
        scored.update(mapping)
        return new

    def zrange(self, key: str, start: int, end: int) -> list[bytes]:
        scored = self.__dict__.get("zsets", {}).get(key, {})
        ordered = sorted(scored, key=scored.__getitem__)
        return [self._b(m) for m in ordered[start:None if end == -1 else end + 1]]

    def zremrangebyscore(self, key: str, low: Any, high: float) -> int:
        scored = self.__dict__.get("zsets", {}).get(key, {})
        gone = [m for m, score in scored.items() if score <= high]
        for m in gone:
            del scored[m]
        return len(gone)

    def ping(self) -> bool:
        if self.__dict__.get("down"):
            raise ConnectionError("Redis is down (fake)")
        return True

    def pttl(self, key: str) -> int:
        return 12_000 if key in self.data else -2

    def rpush(self, key: str, *values: Any) -> int:
        items = self.__dict__.setdefault("lists", {}).setdefault(key, [])
        items.extend(self._b(v) for v in values)
        return len(items)

    def llen(self, key: str) -> int:
        return len(self.__dict__.get("lists", {}).get(key, []))

    def hlen(self, key: str) -> int:
        return len(self.hashes.get(key, {}))


class FakeCelery:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, list[Any], str | None]] = []
        self.fail = fail

    def send_task(self, name: str, args: list[Any] | None = None,
                  queue: str | None = None, **_: Any) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((name, list(args or []), queue))


class FakePipeline:
    """A pipeline over any fake server: queued calls run at ``execute``, all or (when the
    server has a ``check`` that raises, as a Redis that is down) none."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.calls: list[Callable[[], None]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        method = getattr(self.server, name)
        return lambda *a, **kw: self.calls.append(lambda: method(*a, **kw))

    def execute(self) -> None:
        getattr(self.server, "check", lambda: None)()
        for call in self.calls:
            call()
