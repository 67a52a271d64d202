"""Where healer keeps its state when it is not the state directory's SQLite file
(docs/state-backends.md)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from healer.config.types import ConfigModel as _Model
from healer.config.types import Duration, SecretRef


class StateConfig(_Model):
    """The shared PostgreSQL database of ``healer run --replicas`` (docs/state-backends.md).

    Without a ``state`` section healer keeps its state in ``<stateDir>/healer.sqlite`` (one
    management host). ``url`` is a libpq URL without the password, e.g.
    ``postgresql://healer@db.example:5432/healer?sslmode=verify-full``; ``password`` is a secret
    reference (``{file: ...}``, ``{credential: NAME}`` under systemd, or ``{env: ...}``); none
    means libpq's own ways (``~/.pgpass``, a client certificate, peer authentication).
    """

    url: str
    password: SecretRef | None = None
    # How long a replica's lease on a cluster lasts without renewal (renewed every third of
    # it): a dead replica's clusters are taken over after at most this long
    # (docs/state-backends.md, "Several replicas").
    lease_seconds: Duration = Field(15.0, alias="leaseSeconds", ge=3.0, le=600.0)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(
                f"must be a postgresql:// URL (got scheme {parts.scheme or 'none'!r}); without a "
                "'state' section healer keeps its state in SQLite in the state directory"
            )
        if parts.password is not None:
            raise ValueError(
                "must not hold the password (the config is not a secret): give it as "
                "state.password: {file: /etc/healer/state-password} or {credential: NAME}"
            )
        if not parts.path.strip("/"):
            raise ValueError("must name the database (postgresql://user@host:5432/DATABASE)")
        return url
