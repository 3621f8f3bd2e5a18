-- The schema a server of commit 61e7751 created in <data dir>/synapse.db: the first release: jobs and their events only (no job_params, models or serve_applications yet).
-- Copied from the _SCHEMA strings of that commit's stores (git show 61e7751:<file>);
-- every store ran its own at each start.

-- server/synapse_server/core/_store.py
CREATE TABLE IF NOT EXISTS jobs (
    ord         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    plugin      TEXT NOT NULL,
    action      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    params      TEXT NOT NULL,
    state       TEXT NOT NULL,
    request_id  TEXT,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    result      TEXT,
    error       TEXT,
    reason      TEXT NOT NULL DEFAULT '',
    progress    REAL NOT NULL DEFAULT 0,
    plugin_version   TEXT NOT NULL DEFAULT '',
    last_seq         INTEGER NOT NULL DEFAULT 0,
    pending_reason   TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id
    ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_events (
    job_id    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    ts        REAL NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
