-- The first schema. Every migration is applied at every open and must be idempotent
-- (CREATE ... IF NOT EXISTS, CREATE OR REPLACE): healer/store/schema.py.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    cluster TEXT NOT NULL, node TEXT NOT NULL,
    record TEXT NOT NULL, health TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
    next_check_at REAL, updated_at REAL NOT NULL,
    PRIMARY KEY (cluster, node)
);
CREATE TABLE IF NOT EXISTS workflows (
    id TEXT PRIMARY KEY, cluster TEXT NOT NULL, pool TEXT, node TEXT NOT NULL, role TEXT NOT NULL,
    state TEXT NOT NULL, step TEXT NOT NULL, reason TEXT NOT NULL, evidence TEXT NOT NULL,
    machine TEXT, replacement_name TEXT NOT NULL, replacement TEXT, forced INTEGER NOT NULL DEFAULT 0,
    started_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL, error TEXT
);
CREATE INDEX IF NOT EXISTS workflows_by_cluster ON workflows (cluster, state);
CREATE TABLE IF NOT EXISTS workflow_steps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, workflow_id TEXT NOT NULL, step TEXT NOT NULL,
    status TEXT NOT NULL, at REAL NOT NULL, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, cluster TEXT NOT NULL,
    node TEXT, pool TEXT, workflow_id TEXT, event TEXT NOT NULL, reason TEXT NOT NULL,
    message TEXT NOT NULL, evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_node ON audit (cluster, node, seq);
-- The audit log is append-only: UPDATE and DELETE (and, on PostgreSQL, TRUNCATE) raise.
-- dialect: sqlite
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
-- dialect: postgresql
CREATE OR REPLACE FUNCTION healer_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE OR REPLACE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION healer_audit_append_only();
CREATE OR REPLACE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION healer_audit_append_only();
-- dialect: all
CREATE TABLE IF NOT EXISTS pauses (
    scope TEXT PRIMARY KEY, at REAL NOT NULL, note TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS breaker (
    cluster TEXT PRIMARY KEY, reason TEXT NOT NULL, opened_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS bad_upgrade_breaker (
    cluster TEXT PRIMARY KEY, reason TEXT NOT NULL, opened_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS breaker_resets (
    cluster TEXT NOT NULL, kind TEXT NOT NULL, reset_at REAL NOT NULL,
    PRIMARY KEY (cluster, kind)
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, cluster TEXT NOT NULL,
    node TEXT, args TEXT NOT NULL, state TEXT NOT NULL, answer TEXT, answered_at REAL
);
CREATE TABLE IF NOT EXISTS webhook_replays (
    signature TEXT PRIMARY KEY, expires_at REAL NOT NULL
);
-- The node events the health tracker consumed, for `healer simulate --history`. Added without
-- raising the version: an older healer that ignores it loses only that history.
CREATE TABLE IF NOT EXISTS node_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, event TEXT NOT NULL
);
