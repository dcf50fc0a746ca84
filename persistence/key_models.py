"""The tables of message authentication (issue 12). Alembic migration 0006_keys.

    signing_keys   the core's Ed25519 keys: public part, private part sealed with the data key, and a
                   state (current: signs; next and accepted: verify only; retired: refused)
    api_keys       client keys (producers, operators, executors, ...): name, role, the SHA-256 of the
                   token (for the HTTP API) and its MAC key sealed (for signed messages); never the token;
                   an optional scope of workflow name patterns (migration 0007)
    audit_log      every mutating HTTP API call and every denied one (issue 13, migration 0007)
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Index, Integer, String, Table, Text
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
    scope: Mapped[str | None] = mapped_column(String(200), nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(Timestamp)
    key_id: Mapped[str | None] = mapped_column(String(12), nullable=True)
    key_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str | None] = mapped_column(String(500), nullable=True)


signing_keys = cast(Table, SigningKey.__table__)
api_keys = cast(Table, ApiKey.__table__)
audit_log = cast(Table, AuditEntry.__table__)
