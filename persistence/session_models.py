"""Web UI sessions (issue 15, migration 0009_ui_sessions): one row per signed-in browser.

    ui_sessions   a public id (shown to admins, used to revoke), the SHA-256 of the cookie's token
                  (the token itself is never stored), the API key it was opened with (id, name, role,
                  scope), that key's MAC key sealed under a key derived from the cookie's token (so the
                  session can sign what its user asks, and a copy of the table cannot), the CSRF token
                  of its forms, when it was opened, last seen, when it ends at the latest, and
                  revoked_at once signed out or revoked by an admin.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Index, LargeBinary, String, Table
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, Timestamp


class UiSession(Base):
    __tablename__ = "ui_sessions"
    __table_args__ = (Index("ix_ui_sessions_token_hash", "token_hash", unique=True),
                      Index("ix_ui_sessions_expires_at", "expires_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(12))
    key_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sealed_mac: Mapped[bytes] = mapped_column(LargeBinary)
    csrf: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    last_seen: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


ui_sessions = cast(Table, UiSession.__table__)
