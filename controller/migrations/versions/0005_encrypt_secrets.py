"""encrypt secrets: env values, push requests and TLS private keys sealed with the platform key

Rows written before are sealed in place (and opened again by the downgrade); the columns keep
their types: a sealed JSON value is one JSON string, a sealed key is text. The key comes from
the caller (controller.admin.migrate puts the platform's box in the config's attributes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from contracts.secretbox import SecretBox, SecretKeyError, is_sealed

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# (table, column, JSON or text)
COLUMNS = (("releases", "env", True), ("builds", "requested", True),
           ("certificates", "key_pem", False))


def _box() -> SecretBox:
    box = context.config.attributes.get("secret_box")
    if box is None:
        raise SecretKeyError("migration 0005 seals secrets and needs the platform secret key: "
                             "run it through 'paas-admin migrate', which loads (or makes) it.")
    return box


def _rewrite(change: Any) -> None:
    conn = op.get_bind()
    if conn.dialect.name == "sqlite":  # overwritten values are zeroed, not left in free space
        conn.exec_driver_sql("PRAGMA secure_delete = ON")
    for table_name, column, is_json in COLUMNS:
        table = sa.table(table_name, sa.column("id", sa.Integer()),
                         sa.column(column, sa.JSON() if is_json else sa.Text()))
        col = table.c[column]
        for row_id, value in conn.execute(sa.select(table.c.id, col)).all():
            new = change(value, is_json)
            if new is not value:
                conn.execute(table.update().where(table.c.id == row_id).values({column: new}))


def upgrade() -> None:
    box = _box()

    def seal(value: Any, is_json: bool) -> Any:
        if value is None or is_sealed(value):
            return value
        return box.seal_json(value) if is_json else box.seal(value)

    _rewrite(seal)


def downgrade() -> None:
    box = _box()

    def open_(value: Any, is_json: bool) -> Any:
        if not is_sealed(value):
            return value
        return box.open_json(value) if is_json else box.open(value)

    _rewrite(open_)
