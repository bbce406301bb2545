"""``paas-admin``: database migrations and the admin token."""

from __future__ import annotations

import os
import secrets
from importlib import resources
from pathlib import Path

import click
from alembic import command
from alembic.config import Config
from sqlalchemy import select

from contracts import settings as settings_mod
from contracts.secretbox import ensure_key, load_box
from contracts.settings import Settings
from controller.db import make_engine, make_sessionmaker
from controller.errors import ControllerError
from controller.models import DEFAULT_TEAM, Domain, Role, Scope, Team, Token, User
from controller.models.user import validate_password


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("controller") / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    cfg.attributes["default_domain"] = settings.domain  # the first shared domain (0004)
    cfg.attributes["secret_box"] = load_box(settings)  # seals secrets (0005)
    return cfg


def migrate(settings: Settings) -> None:
    """Bring the schema up to date, and make the platform's domain a shared domain (it may
    have changed since the database was made)."""
    secure_data_dir(settings)
    ensure_key(settings)  # the platform secret key, made on first use (0600)
    command.upgrade(alembic_config(settings), "head")
    secure_database_file(settings)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with make_sessionmaker(engine)() as session:
            if session.scalar(select(Domain).where(Domain.name == settings.domain)) is None:
                session.add(Domain(name=settings.domain, team_id=None))
                session.commit()
    finally:
        engine.dispose()


def secure_data_dir(settings: Settings) -> None:
    """The data dir and the blobstore for the platform's user alone, whatever the umask: the
    blobstore 0700 (every team's packages and droplets); the data dir 0711, which others may
    pass through but not list (nginx's workers, user nobody, reach their temp folders under
    the router's folder), and whose files (database, keys, tokens) are 0600."""
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    Path(settings.data_dir).chmod(0o711)
    settings.blobstore_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.blobstore_dir.chmod(0o700)


def secure_database_file(settings: Settings) -> None:
    """A SQLite database file (and its WAL files, which SQLite makes with its mode) 0600."""
    if settings.database_url:
        return
    db = Path(settings.sqlalchemy_url.removeprefix("sqlite:///"))
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if path.exists():
            path.chmod(0o600)


def admin_token_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / "admin-token"


ADMIN_USER = "admin"
ADMIN_TOKEN_NAME = "admin (make up)"


def ensure_admin(settings: Settings, *, rotate: bool = False) -> tuple[str, str | None]:
    """The platform admin ``admin`` and its token, made the first time with the default team.

    Returns the token (kept in the data dir, 0600, for ``make up`` to log the CLI in) and the
    admin's password when it was just made (shown once, stored only as a hash), else None.
    ``rotate`` revokes the kept token and issues a new one.
    """
    from controller import accounts

    path = admin_token_file(settings)
    password = None
    sessions = make_sessionmaker(make_engine(settings.sqlalchemy_url))
    with sessions() as session:
        if session.scalar(select(Team).where(Team.name == DEFAULT_TEAM)) is None:
            session.add(Team(name=DEFAULT_TEAM))
        user = session.scalar(select(User).where(User.username == ADMIN_USER))
        if user is None:
            password = secrets.token_urlsafe(15)
            user = accounts.create_user(session, ADMIN_USER, password, admin=True)
        elif not user.is_admin:
            raise click.ClickException(f"the user {ADMIN_USER!r} exists and is not a platform "
                                       "admin: make it one, or remove it, then run this again.")
        if not user.password_hash and password is None:  # an admin of before users existed
            password = secrets.token_urlsafe(15)
            user.password_hash = accounts.hash_password(password)
        kept = session.scalar(select(Token).where(Token.user_id == user.id,
                                                  Token.name == ADMIN_TOKEN_NAME))
        if kept is not None and not rotate and path.exists() and \
                kept.token_hash == Token.hash(path.read_text().strip()):
            session.commit()
            return path.read_text().strip(), password
        if kept is not None:
            session.delete(kept)
        session.flush()  # the user's id, and the kept token gone before its name is reused
        _, secret = accounts.issue_token(session, user, ADMIN_TOKEN_NAME, Scope.ADMIN)
        session.commit()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret, password


def ensure_admin_token(settings: Settings) -> str:
    """The admin's token (see :func:`ensure_admin`)."""
    return ensure_admin(settings)[0]


@click.group()
def main() -> None:
    """Administer the controller's database."""


@main.command("migrate")
def migrate_cmd() -> None:
    """Bring the database schema up to date."""
    migrate(settings_mod.load())


@main.command("admin-token")
@click.option("--rotate", is_flag=True, help="Revoke the admin's kept token and issue a new one.")
def admin_token_cmd(rotate: bool) -> None:
    """Print the admin's token (kept in the data dir), creating it the first time."""
    settings = settings_mod.load()
    migrate(settings)
    token, password = ensure_admin(settings, rotate=rotate)
    if password:
        click.echo(f"the platform admin is user {ADMIN_USER!r} with password {password} "
                   "(shown once: change it with 'paas passwd')", err=True)
    click.echo(token)


@main.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
def set_password_cmd(username: str, password_stdin: bool) -> None:
    """Set USERNAME's password (a forgotten admin password, say); its login tokens end."""
    from controller import accounts

    settings = settings_mod.load()
    migrate(settings)
    password = (click.get_text_stream("stdin").readline().rstrip("\n") if password_stdin
                else click.prompt("New password", hide_input=True, confirmation_prompt=True))
    sessions = make_sessionmaker(make_engine(settings.sqlalchemy_url))
    with sessions() as session:
        try:
            user = accounts.find_user(session, username)
            user.password_hash = accounts.hash_password(validate_password(password))
        except ControllerError as e:
            raise click.ClickException(e.message) from e
        accounts.revoke_logins(session, user)
        session.commit()
    click.echo(f"the password of {username!r} is set.")


@main.command("create-token")
@click.argument("username")
@click.option("--role", type=click.Choice([Role.ADMIN, *Role.ORDER]), default=Role.DEVELOPER,
              help="The user's role in the team (admin: a platform admin).")
@click.option("--team", default=DEFAULT_TEAM, show_default=True)
def create_token_cmd(username: str, role: str, team: str) -> None:
    """Issue a token for USERNAME (made if missing, without a password) with ROLE in TEAM
    (made if missing) and print it once."""
    from controller import accounts

    settings = settings_mod.load()
    migrate(settings)
    sessions = make_sessionmaker(make_engine(settings.sqlalchemy_url))
    with sessions() as session:
        try:
            click.echo(accounts.member_token(session, username, team, role))
        except ControllerError as e:
            raise click.ClickException(e.message) from e


@main.command("gc")
@click.option("--keep", "keep", type=click.IntRange(1), default=None,
              help="Releases per app whose droplets stay (default: PAAS_GC_KEEP_RELEASES).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def gc_cmd(keep: int | None, dry_run: bool) -> None:
    """Remove droplets, images, layers, packages and buildpack uploads no kept release uses."""
    import docker

    from controller import gc
    from controller.blobstore import Blobstore
    from controller.models.sealed import use_secret_box

    settings = settings_mod.load()
    migrate(settings)
    # Opened with the platform key: the builds' push options (their buildpack uploads) are
    # sealed.
    engine = use_secret_box(make_engine(settings.sqlalchemy_url), load_box(settings))
    try:
        client = docker.from_env(timeout=120)
    except docker.errors.DockerException as e:
        raise click.ClickException(f"the Docker engine cannot be reached ({e}): run gc where "
                                   "the stager builds images, with DOCKER_HOST set.") from e
    try:
        with make_sessionmaker(engine)() as session:
            done = gc.collect(settings, session, Blobstore(settings.blobstore_dir), client,
                              keep_releases=keep, dry_run=dry_run)
    finally:
        client.close()
        engine.dispose()
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(done.blobs)} blobs ({done.bytes / 1e6:.1f} MB) and "
               f"{len(done.images)} images")
    for name in [*done.blobs, *done.images]:
        click.echo(f"  {name}")
    for tag in done.kept_images:
        click.echo(f"  kept {tag}: the Docker engine refused (a container or image uses it)")
