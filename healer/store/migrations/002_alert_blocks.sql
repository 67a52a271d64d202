-- The blocking alerts (healer.planner.alert_blocks). They were a JSON file beside the SQLite
-- database; opening a SQLite store imports that file once.
CREATE TABLE IF NOT EXISTS alert_blocks (
    cluster TEXT NOT NULL, alert TEXT NOT NULL, fingerprint TEXT NOT NULL,
    since REAL NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (cluster, alert, fingerprint)
);
