"""build actor: who pushed a build moves out of its sealed push options into builds.actor

The push options (builds.requested, sealed since 0005) held the actor next to what the push
asked for; it becomes a column of its own, and the options keep only options
(contracts.options.PushOptions). Each row is opened, its actor taken out and the rest sealed
again; the downgrade puts the actor back. The key comes from the caller, as for 0005.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from contracts.secretbox import SecretBox, SecretKeyError, is_sealed

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BUILDS = sa.table("builds", sa.column("id", sa.Integer()), sa.column("requested", sa.JSON()),
                  sa.column("actor", sa.String(length=100)))


def _box() -> SecretBox:
    box = context.config.attributes.get("secret_box")
    if box is None:
        raise SecretKeyError("migration 0007 reads the sealed push options and needs the "
                             "platform secret key: run it through 'paas-admin migrate', which "
                             "loads it.")
    return box


def _open(box: SecretBox, value: Any) -> dict[str, Any]:
    opened = box.open_json(value) if is_sealed(value) else value
    return dict(opened) if isinstance(opened, dict) else {}


def upgrade() -> None:
    with op.batch_alter_table("builds") as batch:
        batch.add_column(sa.Column("actor", sa.String(length=100), nullable=True))
    box, conn = _box(), op.get_bind()
    for row_id, value in conn.execute(sa.select(BUILDS.c.id, BUILDS.c.requested)).all():
        requested = _open(box, value)
        if "actor" not in requested:
            continue
        actor = requested.pop("actor")
        conn.execute(BUILDS.update().where(BUILDS.c.id == row_id).values(
            requested=box.seal_json(requested),
            actor=None if actor is None else str(actor)[:100]))


def downgrade() -> None:
    box, conn = _box(), op.get_bind()
    for row_id, value, actor in conn.execute(
            sa.select(BUILDS.c.id, BUILDS.c.requested, BUILDS.c.actor)).all():
        if actor is None:
            continue
        requested = _open(box, value)
        requested["actor"] = actor
        conn.execute(BUILDS.update().where(BUILDS.c.id == row_id).values(
            requested=box.seal_json(requested)))
    with op.batch_alter_table("builds") as batch:
        batch.drop_column("actor")
