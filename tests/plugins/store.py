"""The state store in a fresh temporary state directory, closed after the test; and
``state_backend``, which runs a test on both backends (SQLite, PostgreSQL).

A test module opts in with ``pytestmark = pytest.mark.usefixtures("state_backend")``: each test
then runs twice. In the PostgreSQL run every ``Store.open(state_dir)`` of the test process opens
a fresh database of the session's server (tests/postgres.py) instead, one per state directory,
and :func:`state_section` gives the ``state`` config section for a ``healer run`` the test starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healer.store.sqlite import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path)
    try:
        yield s
    finally:
        s.close()


class Backend:
    """Which backend this run of the test uses, and how to reach its database."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: Any = None
        self.databases: dict[Path, str] = {}

    def database(self, state_dir: Path) -> str:
        key = Path(state_dir).resolve()
        if key not in self.databases:
            self.databases[key] = self.server.create_database()
        return self.databases[key]

    def state_section(self, state_dir: Path) -> dict[str, Any] | None:
        """The config's ``state`` section for a daemon of ``state_dir`` (None on SQLite)."""
        if self.name == "sqlite":
            return None
        from tests.postgres import PASSWORD

        password = Path(state_dir) / "state-password"
        password.write_text(PASSWORD + "\n")
        return {
            "url": self.server.url(self.database(state_dir)),
            "password": {"file": str(password)},
        }


@pytest.fixture(params=["sqlite", "postgresql"])
def state_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Backend:
    backend = Backend(request.param)
    if backend.name == "postgresql":
        from healer.store.postgres import PostgresStore
        from tests.postgres import PASSWORD

        backend.server = request.getfixturevalue("pg_server")

        def open_postgres(cls: type[Store], state_dir: Path) -> Store:
            url = backend.server.url(backend.database(state_dir))
            return PostgresStore.connect(url, password=PASSWORD, state_dir=Path(state_dir))

        monkeypatch.setattr(Store, "open", classmethod(open_postgres))
        monkeypatch.setattr(Store, "has_state", classmethod(lambda cls, state_dir: True))

        def drop() -> None:
            for name in backend.databases.values():
                backend.server.drop_database(name)

        request.addfinalizer(drop)
    return backend
