"""The log pipeline: apps' log lines from where they are made to whoever reads them.

One Redis stream per app (``keys.app_log``) holds the lines of every source, each tagged
with it: the app's own output (APP, shipped by the agent, ``dea_agent/logs.py``), the
router's access lines (RTR, ``router/accesslog.py``), staging output (STG, the stager) and
the platform's own lines (API, HEALTH, the controller). The controller serves them
(``controller/api/logs.py``, stored and followed) and ``paas logs`` prints them.

- :mod:`logpipe.lines`: one line, its fields in Redis, its JSON and text (the CLI's too);
- :mod:`logpipe.writer`: writing lines, bounded by a cap, a line size and a rate per app;
- :mod:`logpipe.output`: builds' and tasks' output streams;
- :mod:`logpipe.resp`: Redis's protocol by hand, where redis-py's costs more than Redis;
- :mod:`logpipe.dockertime`: Docker's log timestamps, for the agent.

Nothing here imports redis-py at import time: the CLI reads lines with this package.
"""

from logpipe.dockertime import DockerTime
from logpipe.lines import API, APP, HEALTH, RTR, SOURCES, STG, LogLine, entry_json, line_of
from logpipe.output import StagingWriter, StreamWriter
from logpipe.resp import raw_reply
from logpipe.writer import AppLogWriter, TokenBucket, append, cut, dropped_line

__all__ = ["API", "APP", "HEALTH", "RTR", "SOURCES", "STG", "AppLogWriter", "DockerTime",
           "LogLine", "StagingWriter", "StreamWriter", "TokenBucket", "append", "cut",
           "dropped_line", "entry_json", "line_of", "raw_reply"]
