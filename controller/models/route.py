"""Domains, the routes under them (each mapped to one app), and TLS certificates per domain."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import Boolean, DateTime, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from contracts import options
from contracts.routing import BALANCING, ROUND_ROBIN
from controller.errors import InvalidInput
from controller.models.app import App
from controller.models.base import Base, created, guid, intpk
from controller.models.sealed import SealedText
from controller.models.team import Team

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
# Path segments of unreserved characters (RFC 3986) only: nothing nginx would read as syntax.
PATH_RE = re.compile(r"^(?:/[A-Za-z0-9._~-]+)+$")
WILDCARD = "*"


def validate_domain(name: str) -> str:
    name = (name or "").strip().lower().rstrip(".")
    if len(name) > 253 or not DOMAIN_RE.match(name):
        raise InvalidInput(f"{name!r} is not a domain name: use DNS labels of letters, digits "
                           "and hyphens separated by dots, such as apps.example.com.")
    return name


def validate_hostname(hostname: str | None) -> str:
    """A route's host name as contracts.options defines it (lower-cased); a 400 if bad."""
    try:
        return options.hostname(hostname)
    except options.InvalidOption as e:
        raise InvalidInput(e.message) from None


def validate_path(path: str | None) -> str:
    path = (path or "").strip()
    if path in ("", "/"):
        return ""
    path = path.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    if len(path) > 128 or not PATH_RE.match(path):
        raise InvalidInput(f"{path!r} is not a route path: use /segments of letters, digits, "
                           "'.', '_', '~' and '-', such as /api/v1.")
    return path


def validate_balance(balance: str | None) -> str:
    balance = balance or ROUND_ROBIN
    if balance not in BALANCING:
        raise InvalidInput(f"load balancing must be one of {', '.join(BALANCING)}, "
                           f"not {balance!r}.")
    return balance


class Domain(Base):
    """A domain routes live under: shared (every team's, made by an admin) or private (one
    team's own, such as its company domain)."""

    __tablename__ = "domains"
    id: Mapped[intpk]
    guid: Mapped[guid]
    name: Mapped[str] = mapped_column(String(253), unique=True)
    # The team that owns a private domain; None for a shared one.
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"),
                                                nullable=True)
    created_at: Mapped[created]

    team: Mapped[Team | None] = relationship()
    certificate: Mapped[Certificate | None] = relationship(
        back_populates="domain", cascade="all, delete-orphan", uselist=False)

    @property
    def shared(self) -> bool:
        return self.team_id is None


class Route(Base):
    """``hostname.domain/path`` and the app it is mapped to (one app at a time).

    ``hostname`` is ``""`` for the domain itself and ``"*"`` for every name under it; ``path``
    is ``""`` or ``/a/b`` (requests under the longest matching path go to its app).
    """

    __tablename__ = "routes"
    __table_args__ = (UniqueConstraint("domain_id", "hostname", "path",
                                       name="uq_routes_domain_hostname_path"),)
    id: Mapped[intpk]
    guid: Mapped[guid]
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"))
    hostname: Mapped[str] = mapped_column(String(63), default="")
    path: Mapped[str] = mapped_column(String(128), default="")
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    balance: Mapped[str] = mapped_column(String(32), default=ROUND_ROBIN)
    https_redirect: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created]

    domain: Mapped[Domain] = relationship()
    app: Mapped[App] = relationship(back_populates="routes")

    @property
    def host(self) -> str:
        return f"{self.hostname}.{self.domain.name}" if self.hostname else self.domain.name

    @property
    def url(self) -> str:
        return f"{self.host}{self.path}"


class Certificate(Base):
    """The certificate chain and key the router serves HTTPS with for a domain and the names
    under it. The key is sealed with the platform key in the database (and in the route table
    the router reads)."""

    __tablename__ = "certificates"
    id: Mapped[intpk]
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"),
                                           unique=True)
    cert_pem: Mapped[str] = mapped_column(Text)
    key_pem: Mapped[str] = mapped_column(SealedText)
    names: Mapped[str] = mapped_column(Text, default="")  # DNS names it covers, comma-separated
    not_after: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of the leaf, hex
    created_at: Mapped[created]

    domain: Mapped[Domain] = relationship(back_populates="certificate")
