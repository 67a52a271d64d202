-- Per-cluster ownership of healer run --replicas (healer.store.leases, healer.planner.ownership):
-- one lease per cluster (holder, epoch, expiry on the database's wall clock, in seconds) and one
-- heartbeat per replica. A daemon on SQLite owns every cluster and leaves these tables empty.
CREATE TABLE IF NOT EXISTS cluster_lease (
    cluster TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replica_heartbeat (
    replica TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
