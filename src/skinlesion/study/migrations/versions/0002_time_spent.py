"""Time spent per answer: the case last shown to each reader (and when), the answer's seconds; answers by study.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("readers") as batch:
        batch.add_column(sa.Column("shown_case_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("shown_phase", sa.String(16), nullable=True))
        batch.add_column(sa.Column("shown_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("answers") as batch:
        batch.add_column(sa.Column("time_spent_s", sa.Float, nullable=True))
    op.create_index("ix_answers_study", "answers", ["study_id"])


def downgrade() -> None:
    op.drop_index("ix_answers_study", table_name="answers")
    with op.batch_alter_table("answers") as batch:
        batch.drop_column("time_spent_s")
    with op.batch_alter_table("readers") as batch:
        for col in ("shown_at", "shown_phase", "shown_case_id"):
            batch.drop_column(col)
