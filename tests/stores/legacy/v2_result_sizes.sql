-- The schema a server of commit 334a782 created in <data dir>/synapse.db: jobs.result_size added; no plugin_sha256 yet.
-- Copied from the _SCHEMA strings of that commit's stores (git show 334a782:<file>);
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
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result_size      INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id
    ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_params (
    job_id      TEXT PRIMARY KEY,
    params      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    ts        REAL NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

-- server/synapse_server/core/models/_store.py
CREATE TABLE IF NOT EXISTS models (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         TEXT NOT NULL,
    name           TEXT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    framework      TEXT NOT NULL DEFAULT '',
    metadata       TEXT NOT NULL DEFAULT '{}',
    sha256         TEXT NOT NULL,
    size_bytes     INTEGER NOT NULL,
    archive_format TEXT NOT NULL,
    created_at     REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS models_tenant ON models (tenant, id);
CREATE INDEX IF NOT EXISTS models_sha256 ON models (sha256);

-- server/synapse_server/core/deployments.py
CREATE TABLE IF NOT EXISTS serve_applications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    plugin TEXT NOT NULL,
    action TEXT NOT NULL,
    job_id TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    route_prefix TEXT NOT NULL DEFAULT '',
    model_ids TEXT NOT NULL DEFAULT '[]',
    ray_actor_options TEXT NOT NULL DEFAULT '{}',
    endpoint_action TEXT NOT NULL DEFAULT '',
    replicas TEXT NOT NULL DEFAULT '[]',
    create_time REAL NOT NULL,
    update_time REAL NOT NULL,
    UNIQUE (tenant, name)
);
CREATE INDEX IF NOT EXISTS serve_applications_endpoint
    ON serve_applications (tenant, plugin, endpoint_action);
