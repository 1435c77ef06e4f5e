"""Tables of the API tokens (collector/auth.py) and crew sign-in codes, and their steps (`AUTH`).

Tokens and codes are stored as SHA-256 hex digests of random 32-byte secrets, never in clear.
Their step versions (52, 53) are those they had when the registry owned them, so an older
database adopts them as they are.
"""

from __future__ import annotations

import sqlalchemy as sa

from collector.migrations import MigrationSet, add_missing_columns, creates

metadata = sa.MetaData()

api_tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("token_hash", sa.Text, nullable=False, unique=True),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("rate_per_min", sa.Integer),  # None: no limit
    sa.Column("unit", sa.Text),  # role crew: the unit whose incidents it sees
    sa.Column("member", sa.Text),  # role crew: the member's name (history, assignment)
)

# One-time crew sign-in links: the code is shown once (URL and QR) and stored as its SHA-256.
signin_codes = sa.Table(
    "signin_codes", metadata,
    sa.Column("code_hash", sa.Text, primary_key=True),
    sa.Column("unit", sa.Text, nullable=False),
    sa.Column("member", sa.Text, nullable=False),
    sa.Column("token_name", sa.Text, nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("created_by", sa.Text, nullable=False, server_default=""),
    sa.Column("expires", sa.BigInteger, nullable=False),
    sa.Column("used_at", sa.BigInteger),
)


def _crew_tokens(conn: sa.Connection) -> None:
    add_missing_columns(api_tokens)(conn)
    metadata.create_all(conn, tables=[signin_codes])


AUTH = MigrationSet("auth", [
    (52, "security: API tokens with roles", creates(metadata, api_tokens)),
    (53, "security: crew tokens scoped to a unit and member, one-time sign-in links",
     _crew_tokens),
])
