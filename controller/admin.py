"""``paas-admin``: database migrations and the admin token."""

from __future__ import annotations

import os
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
from controller.models import DEFAULT_TEAM, Domain, Role, Team, Token


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


def ensure_admin_token(settings: Settings) -> str:
    """The admin token: created once with the default team, kept in the data dir (0600)."""
    path = admin_token_file(settings)
    sessions = make_sessionmaker(make_engine(settings.sqlalchemy_url))
    with sessions() as session:
        team = session.scalar(select(Team).where(Team.name == DEFAULT_TEAM))
        if team is None:
            team = Team(name=DEFAULT_TEAM)
            session.add(team)
        if path.exists():
            secret = path.read_text().strip()
            if session.scalar(select(Token).where(Token.token_hash == Token.hash(secret))):
                session.commit()
                return secret
        token, secret = Token.issue("admin", Role.ADMIN, team)
        session.add(token)
        session.commit()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


@click.group()
def main() -> None:
    """Administer the controller's database."""


@main.command("migrate")
def migrate_cmd() -> None:
    """Bring the database schema up to date."""
    migrate(settings_mod.load())


@main.command("admin-token")
def admin_token_cmd() -> None:
    """Print the admin token, creating it the first time."""
    settings = settings_mod.load()
    migrate(settings)
    click.echo(ensure_admin_token(settings))


@main.command("create-token")
@click.argument("name")
@click.option("--role", type=click.Choice([Role.ADMIN, Role.DEVELOPER]), default=Role.DEVELOPER)
@click.option("--team", default=DEFAULT_TEAM, show_default=True)
def create_token_cmd(name: str, role: str, team: str) -> None:
    """Issue a token for NAME in a team (created if missing) and print it once."""
    settings = settings_mod.load()
    migrate(settings)
    sessions = make_sessionmaker(make_engine(settings.sqlalchemy_url))
    with sessions() as session:
        t = session.scalar(select(Team).where(Team.name == team)) or Team(name=team)
        token, secret = Token.issue(name, role, t)
        session.add_all([t, token])
        session.commit()
    click.echo(secret)


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
