"""The route table: which routes the controller mapped to which apps, and the certificates the
router serves HTTPS with. Crosses from the controller (its only writer) to the router.

Desired routes live in the controller's database; Redis holds one JSON document built from
it, ``paas:route-table``. The controller rewrites the whole document after every change and
the health manager writes it when Redis has lost it. Each document carries the time its
database read began (``revision``, nanoseconds); a write is kept only if no newer revision is
stored, so two writers racing never leave an older table last. The router joins the table
with the backends the agents register (:class:`contracts.messages.Backend`, by app guid).
A missing document is "not known yet", never "no routes": the router keeps what it serves.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from contracts import keys

ROUND_ROBIN = "round-robin"
LEAST_CONNECTIONS = "least-connections"
BALANCING = (ROUND_ROBIN, LEAST_CONNECTIONS)


@dataclass(frozen=True)
class MappedRoute:
    """Requests for ``host`` whose path is ``path`` or under it go to the app's web instances.

    ``host`` is a full DNS name (``myapp.localhost``, ``example.com``) or a wildcard
    (``*.apps.example.com``: any one or more labels before the domain). ``path`` is ``""`` or
    ``/segment[/segment...]`` without a trailing slash; among a host's routes the longest
    matching path wins. ``domain`` is the domain the route is under: its certificate (if any)
    serves the route over HTTPS.
    """

    guid: str
    host: str
    domain: str
    app_guid: str
    app_name: str
    path: str = ""
    balance: str = ROUND_ROBIN  # or LEAST_CONNECTIONS
    https_redirect: bool = False  # plain HTTP gets a redirect to HTTPS

    @property
    def url(self) -> str:
        return f"{self.host}{self.path}"


@dataclass(frozen=True)
class Certificate:
    """A PEM certificate chain for a domain and its subdomains, named by its leaf's sha256
    ``fingerprint``, with its private key sealed with the platform key (as the database keeps
    it, :mod:`contracts.secretbox`): Redis never holds a key readable, and only the router
    opens it, to write the file nginx reads."""

    domain: str
    cert_pem: str
    fingerprint: str
    key_sealed: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Certificate:
        """One entry of a stored table; an entry from before sealing (``key_pem``) is kept
        without a key (the router skips it until the table is written again)."""
        return cls(domain=data["domain"], cert_pem=data["cert_pem"],
                   fingerprint=data.get("fingerprint", ""), key_sealed=data.get("key_sealed", ""))


@dataclass
class RouteTable:
    revision: int  # nanoseconds since the epoch when the writer's database read began
    routes: list[MappedRoute] = field(default_factory=list)
    certificates: list[Certificate] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> RouteTable:
        data = json.loads(raw)
        return cls(
            revision=int(data["revision"]),
            routes=[MappedRoute(**r) for r in data.get("routes", [])],
            certificates=[Certificate.from_dict(c) for c in data.get("certificates", [])],
        )


# KEYS[1] the table, KEYS[2] the channel; ARGV[1] revision, ARGV[2] the document.
_WRITE_IF_NEWER = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, doc = pcall(cjson.decode, stored)
  if ok and type(doc) == 'table' and tonumber(doc['revision']) and
      tonumber(doc['revision']) > tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], 'route-table')
return 1
"""


def write_route_table(client: Any, table: RouteTable, *, only_if_missing: bool = False) -> bool:
    """Store ``table`` unless a newer revision is stored (or, with ``only_if_missing``, any
    table). Tells the router at once. True if it was written."""
    if only_if_missing:
        if not client.set(keys.ROUTE_TABLE, table.to_json(), nx=True):
            return False
        client.publish(keys.ROUTES_CHANGED, "route-table")
        return True
    return bool(client.eval(_WRITE_IF_NEWER, 2, keys.ROUTE_TABLE, keys.ROUTES_CHANGED,
                            str(table.revision), table.to_json()))


def read_route_table(client: Any) -> RouteTable | None:
    """The stored table, or None if there is none. Raises ValueError if it is unreadable."""
    raw = client.get(keys.ROUTE_TABLE)
    if raw is None:
        return None
    try:
        return RouteTable.from_json(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"the route table in Redis is not readable: {e}") from e
