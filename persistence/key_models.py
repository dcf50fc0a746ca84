"""The tables of message authentication (issue 12). Alembic migration 0006_keys.

    signing_keys   the core's Ed25519 keys: public part, private part sealed with the data key, and a
                   state (current: signs; next and accepted: verify only; retired: refused)
    api_keys       client keys (producers, operators, executors, ...): name, role, the SHA-256 of the
                   token (for the HTTP API) and its MAC key sealed (for signed messages); never the token
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base, Timestamp


class SigningKey(Base):
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(12), primary_key=True)
    public: Mapped[str] = mapped_column(String(64))
    private: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    changed_at: Mapped[datetime] = mapped_column(Timestamp)


class ApiKey(Base):
    __tablename__ = "api_keys"

    kid: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64))
    mac_key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


signing_keys = cast(Table, SigningKey.__table__)
api_keys = cast(Table, ApiKey.__table__)
