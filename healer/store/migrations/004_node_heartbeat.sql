-- A node's last heartbeat in its own column, out of the JSON record: a heartbeat (the bulk of
-- the event stream) writes one number and encodes nothing (Store.save_heartbeats). A record an
-- older healer wrote keeps its heartbeat in the JSON, read while the column is NULL.
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS last_heartbeat REAL;
