"""Output streams of builds and tasks: one Redis stream each, of ``line`` entries, then an
``end`` entry, kept ``KEEP_SECONDS`` after it (``keys.build_log``, ``keys.task_log``).

The stager writes a build's output here (:class:`StagingWriter` also copies each line into
the app's log stream, as STG); the agent writes a task's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts.settings import Settings
from logpipe.lines import STG
from logpipe.writer import append

if TYPE_CHECKING:  # the CLI imports this package: redis-py would cost it 0.3 s
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


class StagingWriter(StreamWriter):
    """A build's output stream that also copies each line into the app's stream as STG."""

    def __init__(self, client: redis.Redis, key: str, settings: Settings,
                 app_guid: str) -> None:
        super().__init__(client, key)
        self.settings, self.app_guid = settings, app_guid

    def line(self, text: str) -> None:
        super().line(text)
        append(self.client, self.settings, self.app_guid, STG, text)
