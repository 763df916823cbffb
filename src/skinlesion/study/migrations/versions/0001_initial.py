"""The four tables: studies, cases, readers, answers.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("model_hash", sa.String(128), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("malignant", sa.JSON, nullable=False),
        sa.Column("arms", sa.JSON, nullable=False),
        sa.Column("education", sa.Boolean, nullable=False),
        sa.Column("admin_key_hash", sa.String(64), nullable=False),
        sa.Column("tier_threshold", sa.Float, nullable=True),
        sa.Column("model_answers", sa.Text, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
    )
    op.create_table(
        "cases",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("image_id", sa.Text, nullable=False),
        sa.Column("truth", sa.String(32), nullable=False),
        sa.Column("image", sa.LargeBinary, nullable=False),
        sa.Column("model_probs", sa.JSON, nullable=False),
        sa.Column("model_top", sa.String(32), nullable=False),
        sa.Column("model_malignant", sa.Float, nullable=False),
        sa.Column("model_tier", sa.Text, nullable=True),
        sa.Column("model_source", sa.String(16), nullable=False),
        sa.Column("heatmap", sa.LargeBinary, nullable=True),
        sa.UniqueConstraint("study_id", "position", name="uq_cases_position"),
    )
    op.create_table(
        "readers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("arm", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "answers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.String(32), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("reader_id", sa.Integer, sa.ForeignKey("readers.id", ondelete="CASCADE"), nullable=False),
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("diagnosis", sa.String(32), nullable=False),
        sa.Column("management", sa.String(16), nullable=False),
        sa.Column("confidence", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("reader_id", "case_id", "phase", name="uq_answers_once"),
    )


def downgrade() -> None:
    for table in ("answers", "readers", "cases", "studies"):
        op.drop_table(table)
