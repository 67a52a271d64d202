-- The workflow that requested a node's machine, by the replacement's name: the tracker asks for
-- it once per node it sees first (Store.replacement_requested_at, the whole first list of a
-- fleet), which read every workflow of the cluster ever kept without it.
CREATE INDEX IF NOT EXISTS workflows_by_replacement ON workflows (cluster, replacement_name, started_at);
