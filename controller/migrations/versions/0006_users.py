"""users: users with passwords, their roles in teams, tokens that belong to users (scoped,
expiring), team quotas, app names unique per team, the token of each event

Each token of before becomes a user of its own (named after the token) with the token's
powers: an admin token's user is a platform admin; a developer token's user is a developer
of the token's team. No token gains or loses a permission.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import datetime as dt
import re
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

QUOTAS = ("memory_mb", "instances", "apps", "routes", "tasks", "services")


def _username(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9._-]", "-", name.lower()).strip("-._")[:56] or "user"
    if not base[0].isalnum():
        base = "u" + base
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def upgrade() -> None:
    users = op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guid", sa.String(length=36), nullable=False),
        sa.Column("username", sa.String(length=63), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("guid", name=op.f("uq_users_guid")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    memberships = op.create_table(
        "memberships",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_memberships_user_id_users"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"],
                                name=op.f("fk_memberships_team_id_teams"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_memberships")),
        sa.UniqueConstraint("user_id", "team_id", name=op.f("uq_memberships_user_id")),
    )
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("scope", sa.String(length=10), nullable=False,
                                   server_default="admin"))
        batch.add_column(sa.Column("kind", sa.String(length=10), nullable=False,
                                   server_default="api"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))

    conn = op.get_bind()
    tokens = sa.table("tokens", sa.column("id", sa.Integer()), sa.column("name", sa.String()),
                      sa.column("role", sa.String()), sa.column("team_id", sa.Integer()),
                      sa.column("user_id", sa.Integer()))
    taken: set[str] = set()
    now = dt.datetime.now(dt.UTC)
    for token_id, name, role, team_id in conn.execute(
            sa.select(tokens.c.id, tokens.c.name, tokens.c.role, tokens.c.team_id)
            .order_by(tokens.c.id)).all():
        user_id = conn.execute(users.insert().values(
            guid=str(uuid.uuid4()), username=_username(name, taken), password_hash=None,
            is_admin=role == "admin", created_at=now)).inserted_primary_key[0]
        if role != "admin":
            conn.execute(memberships.insert().values(user_id=user_id, team_id=team_id,
                                                     role="developer"))
        conn.execute(tokens.update().where(tokens.c.id == token_id).values(user_id=user_id))

    with op.batch_alter_table("tokens") as batch:
        batch.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(op.f("fk_tokens_user_id_users"), "users", ["user_id"], ["id"],
                                 ondelete="CASCADE")
        batch.create_unique_constraint(op.f("uq_tokens_user_id"), ["user_id", "name"])
        batch.drop_constraint("fk_tokens_team_id_teams", type_="foreignkey")
        batch.drop_column("team_id")
        batch.drop_column("role")

    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("viewer_logs", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
        for key in QUOTAS:
            batch.add_column(sa.Column(f"quota_{key}", sa.Integer(), nullable=True))

    with op.batch_alter_table("apps") as batch:
        batch.drop_constraint("uq_apps_name", type_="unique")
        batch.create_unique_constraint(op.f("uq_apps_team_id"), ["team_id", "name"])

    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("token", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("token")
    with op.batch_alter_table("apps") as batch:
        batch.drop_constraint("uq_apps_team_id", type_="unique")
        batch.create_unique_constraint("uq_apps_name", ["name"])
    with op.batch_alter_table("teams") as batch:
        for key in QUOTAS:
            batch.drop_column(f"quota_{key}")
        batch.drop_column("viewer_logs")
    # A token goes back to one team with one role: its user's first team (or the default
    # team for an admin).
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("role", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("team_id", sa.Integer(), nullable=True))
    conn = op.get_bind()
    conn.execute(sa.text(
        "UPDATE tokens SET role = (SELECT CASE WHEN users.is_admin THEN 'admin' "
        "ELSE 'developer' END FROM users WHERE users.id = tokens.user_id), "
        "team_id = COALESCE((SELECT MIN(team_id) FROM memberships "
        "WHERE memberships.user_id = tokens.user_id), (SELECT MIN(id) FROM teams))"))
    with op.batch_alter_table("tokens") as batch:
        batch.alter_column("role", existing_type=sa.String(length=20), nullable=False)
        batch.alter_column("team_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key("fk_tokens_team_id_teams", "teams", ["team_id"], ["id"],
                                 ondelete="CASCADE")
        batch.drop_constraint("uq_tokens_user_id", type_="unique")
        batch.drop_constraint("fk_tokens_user_id_users", type_="foreignkey")
        for column in ("last_used_at", "expires_at", "kind", "scope", "user_id"):
            batch.drop_column(column)
    op.drop_table("memberships")
    op.drop_table("users")
