"""The state's files: private whatever the umask (the directory 0700, the files 0600, wider modes
narrowed at start), and a state database healer cannot use stops the start with one paragraph
naming the file and what to do, exit 2, never a traceback (issue 10, items 7 and 8).

A missing, empty or foreign database stays a first start (tests/test_store_first_start.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from healer.store.sqlite import DB_NAME, Store, check_state
from healer.store.statedir import LOCK_FILE, make_private
from providers.lab.driver import LabNodeDriver

BOUND = 30.0


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask for a block (`healer run` sets its own: restored after it too)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- modes ------------------------------------------------------------------------------------


def test_the_state_database_and_its_side_files_are_0600_under_umask_022(tmp_path: Path) -> None:
    with umask(0o022):
        store = Store.open(tmp_path)
        try:
            store.set_meta("probe", 1)  # the WAL is written
            for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm"):
                assert mode(tmp_path / name) == 0o600, name
        finally:
            store.close()


def test_the_lab_cloud_database_is_0600_under_umask_022(tmp_path: Path) -> None:
    with umask(0o022):
        LabNodeDriver(tmp_path / "lab-cloud.sqlite")
    assert mode(tmp_path / "lab-cloud.sqlite") == 0o600
    for side in tmp_path.glob("lab-cloud.sqlite-*"):
        assert mode(side) == 0o600, side.name


def test_wider_modes_found_at_start_are_narrowed_and_logged(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    (state / DB_NAME).write_bytes(b"")
    (state / DB_NAME).chmod(0o644)
    (state / "clock.json").write_text("{}")
    (state / "clock.json").chmod(0o664)
    (state / "private").write_text("")
    (state / "private").chmod(0o600)
    keys = state / "clusters"
    keys.mkdir()
    keys.chmod(0o755)
    (keys / "inner").write_text("")
    (keys / "inner").chmod(0o644)  # the keystore's own rules apply below the top level
    (state / "link").symlink_to(tmp_path)
    with capture_logs() as logs:
        changed = make_private(state)
    assert {(p.name, was, now) for p, was, now in changed} == {
        ("state", 0o755, 0o700),
        (DB_NAME, 0o644, 0o600),
        ("clock.json", 0o664, 0o600),
        ("clusters", 0o755, 0o700),
    }
    assert mode(state) == 0o700 and mode(state / DB_NAME) == 0o600
    assert mode(state / "private") == 0o600
    assert mode(keys / "inner") == 0o644
    narrowed = [e for e in logs if e["event"] == "state.mode_narrowed"]
    assert {(e["path"], e["was"], e["now"]) for e in narrowed} == {
        (str(state), "0755", "0700"),
        (str(state / DB_NAME), "0644", "0600"),
        (str(state / "clock.json"), "0664", "0600"),
        (str(keys), "0755", "0700"),
    }
    assert make_private(state) == []  # nothing left to narrow


def write_config(directory: Path, kubeconfig: Path) -> Path:
    path = directory / "healer.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {
                        "name": "lab",
                        "kubeconfig": str(kubeconfig),
                        "provider": {"plugin": "lab"},
                        "pools": [{"name": "workers", "size": 1}],
                    }
                ]
            }
        )
    )
    return path


# -- a state database healer cannot use --------------------------------------------------------


def healer_database(state: Path, rows: int = 400) -> Path:
    """A real state database of several pages (audit rows), checkpointed into the main file."""
    store = Store.open(state)
    try:
        for i in range(rows):
            store.audit(
                at=float(i), cluster="c", event="test.row", reason="Test", message="x" * 200
            )
    finally:
        store.close()
    path = state / DB_NAME
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode=DELETE")
    for side in ("-wal", "-shm"):
        path.with_name(path.name + side).unlink(missing_ok=True)
    return path


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    for i in range(page * 2, len(data), page * 3):  # every third page after the first two
        data[i : i + 512] = os.urandom(512)
    path.write_bytes(bytes(data))


def newer_schema(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE meta SET value='999' WHERE key='schema'")
        db.commit()


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (truncated, "cannot read this SQLite database"),
        (corrupt_pages, "cannot read this SQLite database"),
        (newer_schema, "newer than this healer understands"),
    ],
    ids=["truncated", "corrupt-pages", "newer-schema"],
)
def test_healer_run_on_an_unusable_database_exits_2_with_the_path_and_advice(
    tmp_path: Path,
    damage: Callable[[Path], None],
    says: str,
) -> None:
    state = tmp_path / "state"
    path = healer_database(state)
    damage(path)
    before = digest(path)
    config = write_config(tmp_path, tmp_path / "kubeconfig")
    run = subprocess.run(
        [sys.executable, "-m", "healer.cli", "run", "-c", str(config), "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert str(path) in run.stderr and says in run.stderr, run.stderr
    assert "restore the backup" in run.stderr
    if damage is not newer_schema:
        assert "move it aside" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert digest(path) == before  # looked at, never written
    assert not list(state.glob(f"{DB_NAME}.foreign-*"))  # not taken for somebody else's


def test_a_damaged_database_is_found_before_the_daemon_uses_it(tmp_path: Path) -> None:
    """The header and the schema read fine; a page further in does not (`quick_check`)."""
    path = healer_database(tmp_path)
    corrupt_pages(path)
    from healer.errors import StateError

    with pytest.raises(StateError, match="cannot read this SQLite database") as refused:
        check_state(tmp_path)
    assert str(path) in str(refused.value)


def test_a_healthy_database_and_a_first_start_pass_the_check(tmp_path: Path) -> None:
    check_state(tmp_path)  # no database: a first start
    healer_database(tmp_path, rows=10)
    check_state(tmp_path)


# The daemon's user, as the issue saw it: root created the database, the daemon cannot read it.
# The interpreter lives under /root here, so the child imports what it needs as root and drops
# to nobody before it runs the command.
AS_NOBODY = """
import os, sys
import healer.cli.run, healer.config.warnings, healer.store.sqlite, healer.store.statedir
import healer.config.loader, healer.config.model  # healer.config loads them on first use
import healer.telemetry.logs
from healer.cli.main import main
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the daemon as nobody: needs root")
def test_an_unreadable_database_exits_2_naming_the_file() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as base:
        state = Path(base) / "state"
        healer_database(state, rows=10)
        (state / DB_NAME).chmod(0o600)  # root's; the daemon runs as nobody
        os.chmod(base, 0o755)
        shutil.chown(state, 65534, 65534)
        config = write_config(Path(base), Path(base) / "kubeconfig")
        config.chmod(0o644)
        run = subprocess.run(
            [sys.executable, "-c", AS_NOBODY, "run", "-c", str(config), "--state-dir", str(state)],
            capture_output=True,
            text=True,
            timeout=BOUND,
        )
    assert run.returncode == 2, run.stderr
    assert f"{state / DB_NAME}: cannot use it (Permission denied)" in run.stderr
    assert "must own" in run.stderr
    assert "Traceback" not in run.stderr


def test_healer_run_under_umask_022_keeps_its_state_private(tmp_path: Path) -> None:
    """A real `healer run` started from a shell with umask 022: every file it makes is 0600,
    its directory 0700, and the wider modes found there are narrowed."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    (state / "clock.json").write_text("{}")
    (state / "clock.json").chmod(0o644)
    config = write_config(tmp_path, tmp_path / "no-kubeconfig")
    proc = subprocess.run(
        [
            "sh",
            "-c",
            'umask 022; exec "$0" -m healer.cli run -c "$1" --state-dir "$2"',
            sys.executable,
            str(config),
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    # No kubeconfig: it stops after opening its state (the config error is not the point).
    assert "state.mode_narrowed" in proc.stdout + proc.stderr
    names = sorted(p.name for p in state.iterdir())
    assert DB_NAME in names and LOCK_FILE in names and "lab-cloud.sqlite" in names, names
    assert mode(state) == 0o700
    for entry in state.iterdir():
        assert mode(entry) == 0o600, (entry.name, oct(mode(entry)))
