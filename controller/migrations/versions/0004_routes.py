"""routes: domains (shared or a team's), routes mapped to apps, TLS certificates per domain

Every app had the route <name>.<domain> before routes were rows; it keeps it as one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    domains = op.create_table(
        "domains",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guid", sa.String(length=36), nullable=False, unique=True),
        sa.Column("name", sa.String(length=253), nullable=False, unique=True),
        sa.Column("team_id", sa.Integer(), sa.ForeignKey("teams.id", ondelete="CASCADE"),
                  nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    routes = op.create_table(
        "routes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("guid", sa.String(length=36), nullable=False, unique=True),
        sa.Column("domain_id", sa.Integer(), sa.ForeignKey("domains.id"), nullable=False),
        sa.Column("hostname", sa.String(length=63), nullable=False),
        sa.Column("path", sa.String(length=128), nullable=False),
        sa.Column("app_id", sa.Integer(), sa.ForeignKey("apps.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("team_id", sa.Integer(), sa.ForeignKey("teams.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("balance", sa.String(length=32), nullable=False),
        sa.Column("https_redirect", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("domain_id", "hostname", "path",
                            name="uq_routes_domain_hostname_path"),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("domain_id", sa.Integer(), sa.ForeignKey("domains.id", ondelete="CASCADE"),
                  nullable=False, unique=True),
        sa.Column("cert_pem", sa.Text(), nullable=False),
        sa.Column("key_pem", sa.Text(), nullable=False),
        sa.Column("names", sa.Text(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # The platform's domain becomes the first shared domain, and each app keeps its route.
    name = context.config.attributes.get("default_domain", "localhost")
    conn = op.get_bind()
    now = dt.datetime.now(dt.UTC)
    conn.execute(domains.insert().values(guid=str(uuid.uuid4()), name=name, team_id=None,
                                         created_at=now))
    domain_id = conn.execute(sa.text("SELECT id FROM domains WHERE name = :n"),
                             {"n": name}).scalar_one()
    for app_id, app_name, team_id in conn.execute(
            sa.text("SELECT id, name, team_id FROM apps")).all():
        conn.execute(routes.insert().values(
            guid=str(uuid.uuid4()), domain_id=domain_id, hostname=app_name, path="",
            app_id=app_id, team_id=team_id, balance="round-robin", https_redirect=False,
            created_at=now))


def downgrade() -> None:
    op.drop_table("certificates")
    op.drop_table("routes")
    op.drop_table("domains")
