"""Which backend holds the state: SQLite in the state directory (the default) or the PostgreSQL
database of ``state.url`` (docs/state-backends.md)."""

from __future__ import annotations

from pathlib import Path

from healer.config.state import StateConfig
from healer.store.sqlite import Store


def open_store(state_dir: Path, state: StateConfig | None = None) -> Store:
    """The store of this configuration. Without ``state``, ``Store.open(state_dir)``, exactly
    as before; with it, the PostgreSQL database (psycopg is imported only then)."""
    if state is None:
        return Store.open(state_dir)
    from healer.store.postgres import PostgresStore

    password = state.password.reveal() if state.password is not None else None
    return PostgresStore.connect(state.url, password=password, state_dir=state_dir)
