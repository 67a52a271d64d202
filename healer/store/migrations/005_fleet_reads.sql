-- Indexes for the readers of a fleet's state. The audit log by event and time: reboot grants and
-- refusals (`healer status`), remediation refusals (the planner), orphans are looked up by event
-- instead of scanning every row the log ever had. On SQLite, the nodes by cluster, pool (read
-- out of the JSON record) and health: the counts `healer status` shows (healer/store/fleet.py,
-- which must spell the expression the same way) are then read off the index, no record decoded.
CREATE INDEX IF NOT EXISTS audit_by_event ON audit (event, at);
-- dialect: sqlite
CREATE INDEX IF NOT EXISTS nodes_by_pool ON nodes (cluster, json_extract(record, '$.pool'), health);
-- dialect: all
