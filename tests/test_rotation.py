"""Encryption-key rotation: the stages, the configuration of each, the journal read back, the
key files, and the lab's model of encryption at rest. Pure or local files only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import yaml

from healer.cli.main import main
from healer.cloud.machines import Machine, MachineState
from healer.jobs.rotate import (
    CA_PLANNED,
    ENCRYPTION_KEY,
    FINISHED,
    STAGE_DONE,
    STARTED,
    open_rotation,
)
from healer.lab.apiserver.encryption import EncryptionAtRest, key_names
from healer.provisioning.keystore import ClusterState, SecretValue
from healer.provisioning.kubeadm.tokens import encryption_key_name
from healer.provisioning.rotation import (
    ADD_KEY,
    DONE,
    REMOVE_OLD_KEY,
    REWRITE_SECRETS,
    STAGES,
    WRITE_NEW_KEY,
    Key,
    SshConfigPush,
    configuration,
    current_key,
    next_key,
    next_key_name,
    next_stage,
    promote,
    stage_keys,
)
from healer.store.sqlite import AuditEntry, Store


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    # `healer rotate` configures logging for a terminal; other tests expect the defaults.
    yield
    structlog.reset_defaults()


K1 = "a" * 43 + "="
K2 = "b" * 43 + "="


@pytest.mark.parametrize(
    ("done", "stage"),
    [
        ((), ADD_KEY),
        ((ADD_KEY,), WRITE_NEW_KEY),
        ((ADD_KEY, WRITE_NEW_KEY), REWRITE_SECRETS),
        ((ADD_KEY, WRITE_NEW_KEY, REWRITE_SECRETS), REMOVE_OLD_KEY),
        (STAGES, DONE),
    ],
)
def test_next_stage(done: tuple[str, ...], stage: str) -> None:
    assert next_stage(done) == stage


def test_the_old_key_stays_readable_until_the_last_stage_and_the_new_one_writes_from_the_second() -> (
    None
):
    assert stage_keys(ADD_KEY, "k1", "k2") == ("k1", "k2")  # readable everywhere, writes old
    assert stage_keys(WRITE_NEW_KEY, "k1", "k2") == ("k2", "k1")
    assert stage_keys(REWRITE_SECRETS, "k1", "k2") == ("k2", "k1")
    assert stage_keys(REMOVE_OLD_KEY, "k1", "k2") == ("k2",)
    with pytest.raises(ValueError, match="unknown rotation stage"):
        stage_keys("shuffle", "k1", "k2")


@pytest.mark.parametrize(
    ("current", "new"),
    [("healer-key-1", "healer-key-2"), ("healer-key-9", "healer-key-10"), ("mykey", "mykey-2")],
)
def test_next_key_name(current: str, new: str) -> None:
    assert next_key_name(current) == new


def test_configuration_lists_the_keys_in_order_then_identity() -> None:
    doc = configuration(
        "secretbox", [Key("healer-key-2", SecretValue(K2)), Key("healer-key-1", SecretValue(K1))]
    )
    (resource,) = doc["resources"]
    assert resource["resources"] == ["secrets"]
    assert resource["providers"] == [
        {"secretbox": {"keys": [{"name": "healer-key-2", "secret": K2}, {"name": "healer-key-1", "secret": K1}]}},
        {"identity": {}},
    ]  # fmt: skip
    assert key_names(doc) == ("healer-key-2", "healer-key-1", "identity")


def _entry(seq: int, event: str, **evidence: object) -> AuditEntry:
    return AuditEntry(
        seq=seq,
        at=float(seq),
        cluster="c",
        node=None,
        pool=None,
        workflow_id=None,
        event=event,
        reason="",
        message="",
        evidence={"kind": ENCRYPTION_KEY, **evidence},
    )


def test_open_rotation_reads_the_journal() -> None:
    base = {"rotation": "r1", "old": "healer-key-1", "new": "healer-key-2"}
    started = _entry(1, STARTED, **base)
    add = _entry(2, STAGE_DONE, stage=ADD_KEY, **base)
    assert open_rotation([]) is None
    journal = open_rotation([add, started])  # read in journal order, not list order
    assert journal is not None and (journal.id, journal.done) == ("r1", (ADD_KEY,))
    assert open_rotation([started, add, _entry(3, FINISHED, **base)]) is None
    # A later rotation is the one under way; another rotation's lines do not count.
    later = {"rotation": "r2", "old": "healer-key-2", "new": "healer-key-3"}
    found = open_rotation(
        [
            started,
            add,
            _entry(3, FINISHED, **base),
            _entry(4, STARTED, **later),
            _entry(5, STAGE_DONE, stage=ADD_KEY, **base),
        ]
    )
    assert found is not None and (found.id, found.old, found.done) == ("r2", "healer-key-2", ())


def test_key_files_next_key_is_kept_until_promoted(tmp_path: Path) -> None:
    state = ClusterState(tmp_path, "c")
    state.path("secrets", "encryption-key").write_text(K1 + "\n")
    assert current_key(state).name == "healer-key-1"
    first = next_key(state, "healer-key-2")
    again = next_key(state, "healer-key-2")
    assert first.secret.reveal() == again.secret.reveal() != K1  # a resume uses the same key
    assert oct(state.path("secrets", "encryption-key.next").stat().st_mode & 0o777) == "0o600"
    promote(state, first)
    promote(state, first)  # idempotent
    now = current_key(state)
    assert (now.name, now.secret.reveal()) == ("healer-key-2", first.secret.reveal())
    assert encryption_key_name(state) == "healer-key-2"  # what new control planes are given
    assert not state.path("secrets", "encryption-key.next").exists()


def test_the_ssh_push_replaces_the_file_and_restarts_the_api_server(tmp_path: Path) -> None:
    push = SshConfigPush(user="admin", known_hosts=tmp_path / "known_hosts")
    machine = Machine(id="i-1", name="cp-1", state=MachineState.RUNNING, tags={})
    argv = push.argv(machine, "10.0.0.5")
    assert argv[argv.index("--") + 1] == "10.0.0.5"
    remote = argv[-1]
    assert remote.startswith("sudo -n sh -c ")
    assert "tar -x -p -f - -C /" in remote and "crictl stop" in remote
    assert "already" not in remote  # unlike the first key push, it always writes


def test_the_lab_model_records_unreadable_secrets() -> None:
    enc = EncryptionAtRest()
    enc.configure("a", ("k1", "identity"))
    enc.configure("b", ("k1", "identity"))
    enc.written(("ns", "s1"))
    assert enc.stored[("ns", "s1")] == "k1" and not enc.violations
    # Making the new key first on one server before the other can read it: a violation.
    enc.configure("a", ("k2", "k1", "identity"))
    enc.written(("ns", "s2"))  # the servers take writes in turn: one of these goes to a
    enc.written(("ns", "s3"))
    assert any("cannot read it" in v for v in enc.violations)
    # Dropping a key a stored Secret needs: a violation.
    enc2 = EncryptionAtRest()
    enc2.configure("a", ("k1",))
    enc2.written(("ns", "s"))
    assert not enc2.stale(("ns", "s"))
    enc2.configure("a", ("k2", "k1"))
    assert enc2.stale(("ns", "s"))  # stored under a key that no longer writes: rewritten
    enc2.configure("a", ("k2",))
    assert any("cannot read Secret ns/s" in v for v in enc2.violations)


def test_rotate_ca_prints_and_journals_the_staged_procedure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "healer.yaml"
    clusters = [
        {"name": n, "provider": {"plugin": "lab"}, "pools": [{"name": "w", "size": 1}]}
        for n in ("one", "two")
    ]
    config.write_text(yaml.safe_dump({"clusters": clusters}))
    args = ["-c", str(config), "--state-dir", str(tmp_path / "state")]
    assert main(["rotate", "ca", *args, "--cluster", "two"]) == 0
    out = capsys.readouterr().out
    assert "cluster two: rotating the cluster CA" in out
    assert "  5. once every component trusts and presents the new CA" in out
    store = Store.open(tmp_path / "state")
    try:
        (row,) = store.audit_log(event=CA_PLANNED)
        assert row.cluster == "two" and len(row.evidence["stages"]) == 5
    finally:
        store.close()
    # Two clusters and no --cluster: a clear error, not a crash.
    assert main(["rotate", "ca", *args]) != 0
    assert "--cluster is needed (clusters: one, two)" in capsys.readouterr().err
