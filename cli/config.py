"""``~/.paas/config``: the target API, the token and the team new apps go to (``PAAS_HOME``
moves the folder)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("PAAS_HOME") or Path.home() / ".paas")


@dataclass
class Config:
    target: str | None = None
    token: str | None = None
    # The team new apps go to ('paas target --team T'), sent as X-Paas-Team; None: the API
    # picks (the caller's only team).
    team: str | None = None
    # Targets the CLI has warned about sending the token to over plain http (once each).
    warned_plain_http: list[str] = field(default_factory=list)

    @classmethod
    def load(cls) -> Config:
        path = home() / "config"
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
        except ValueError:
            return cls()
        warned = data.get("warned_plain_http")
        team = data.get("team")
        return cls(target=data.get("target"), token=data.get("token"),
                   team=team if isinstance(team, str) and team else None,
                   warned_plain_http=[w for w in warned if isinstance(w, str)]
                   if isinstance(warned, list) else [])

    def save(self) -> None:
        folder = home()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / "config"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, path)
