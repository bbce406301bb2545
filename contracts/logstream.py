"""Writing output lines to a Redis stream, as the stager does for builds."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # redis-py costs a CLI that imports these contracts a third of a second
    import redis

MAX_LINE = 8192
MAXLEN = 20_000
KEEP_SECONDS = 24 * 3600


class StreamWriter:
    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def line(self, text: str) -> None:
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + " [line cut]"
        self.client.xadd(self.key, {"line": text}, maxlen=MAXLEN, approximate=True)

    def end(self) -> None:
        pipe = self.client.pipeline()
        pipe.xadd(self.key, {"end": "1"}, maxlen=MAXLEN, approximate=True)
        pipe.expire(self.key, KEEP_SECONDS)
        pipe.execute()
