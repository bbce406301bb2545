"""Hand-written stand-ins for Redis and Celery: for unit tests only."""

from __future__ import annotations

import fnmatch
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

    def exists(self, key: str) -> int:
        return int(key in self.data)

    def mget(self, keys: list[str]) -> list[bytes | None]:
        return [self.data.get(k if isinstance(k, str) else k.decode()) for k in keys]

    def scan_iter(self, match: str = "*", count: int = 0) -> list[str]:
        return [k for k in self.data if fnmatch.fnmatch(k, match)]

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(key, {}))

    def hset(self, key: str, field: str, value: Any) -> int:
        self.hashes.setdefault(key, {})[self._b(field)] = self._b(value)
        return 1

    def hdel(self, key: str, field: str) -> int:
        return int(self.hashes.get(key, {}).pop(self._b(field), None) is not None)

    def publish(self, channel: str, message: Any) -> int:
        self.published.append((channel, str(message)))
        return 0

    def xread(self, streams: dict[str, str], block: int = 0, count: int = 0) -> list:
        return []


class FakeCelery:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, list[Any], str | None]] = []
        self.fail = fail

    def send_task(self, name: str, args: list[Any] | None = None,
                  queue: str | None = None, **_: Any) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((name, list(args or []), queue))
