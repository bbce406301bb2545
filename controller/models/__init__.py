"""Domain models, one file per noun."""

from controller.models.app import App, AppState, HealthCheck, Process, validate_name
from controller.models.base import Base, iso
from controller.models.build import Build, BuildState, Droplet, Package
from controller.models.buildpack import RegisteredBuildpack
from controller.models.event import Event
from controller.models.release import Release, ReleaseStatus
from controller.models.route import Certificate, Domain, Route
from controller.models.team import DEFAULT_TEAM, QUOTA_KEYS, Team
from controller.models.user import Membership, Role, Scope, Token, TokenKind, User

__all__ = [
    "App", "AppState", "Base", "Build", "BuildState", "Certificate", "DEFAULT_TEAM", "Domain",
    "Droplet", "Event",
    "HealthCheck", "Membership", "Package", "Process", "QUOTA_KEYS", "RegisteredBuildpack",
    "Release", "ReleaseStatus", "Role", "Route", "Scope", "Team", "Token", "TokenKind", "User",
    "iso", "validate_name",
]
