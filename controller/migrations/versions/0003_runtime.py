"""runtime: health checks and disk per process, commands and descriptions per release,
restart generation, rollout width and crash policy per app

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("generation", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("max_in_flight", sa.Integer(), nullable=False,
                                   server_default="1"))
        batch.add_column(sa.Column("crash_policy", sa.JSON(), nullable=True))
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("commands", sa.JSON(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch.add_column(sa.Column("created_by", sa.String(length=100), nullable=True))
    # A start command given with a push moves from the process to the releases.
    conn = op.get_bind()
    for app_id, type_, command in conn.execute(sa.text(
            "SELECT app_id, type, command FROM processes WHERE command IS NOT NULL")):
        conn.execute(sa.text("UPDATE releases SET commands = :c WHERE app_id = :a"),
                     {"c": json.dumps({type_: command}), "a": app_id})
    with op.batch_alter_table("processes") as batch:
        batch.add_column(sa.Column("disk_mb", sa.Integer(), nullable=False,
                                   server_default="1024"))
        batch.add_column(sa.Column("health_check_type", sa.String(length=16), nullable=False,
                                   server_default="port"))
        batch.add_column(sa.Column("health_check_endpoint", sa.String(length=255),
                                   nullable=False, server_default="/"))
        batch.add_column(sa.Column("start_timeout", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("health_check_interval", sa.Float(), nullable=True))
        batch.add_column(sa.Column("health_check_probe_timeout", sa.Float(), nullable=True))
        batch.drop_column("command")


def downgrade() -> None:
    with op.batch_alter_table("processes") as batch:
        batch.add_column(sa.Column("command", sa.Text(), nullable=True))
        batch.drop_column("health_check_probe_timeout")
        batch.drop_column("health_check_interval")
        batch.drop_column("start_timeout")
        batch.drop_column("health_check_endpoint")
        batch.drop_column("health_check_type")
        batch.drop_column("disk_mb")
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("created_by")
        batch.drop_column("description")
        batch.drop_column("commands")
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("crash_policy")
        batch.drop_column("max_in_flight")
        batch.drop_column("generation")
