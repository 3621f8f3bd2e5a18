-- The database a server of commit 6428893 created in <data dir>/synapse.db: numbered migrations 1-5
-- (jobs.warnings), no job owners or server leases yet. Written by that commit's open_stores and
-- dumped with sqlite3's iterdump (the schema_migrations rows as recorded; no other rows).
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);
INSERT INTO schema_migrations VALUES(1,'jobs, events, models and serve applications',1796410444.3743281364);
INSERT INTO schema_migrations VALUES(2,'jobs.result_size',1796410444.3745539188);
INSERT INTO schema_migrations VALUES(3,'jobs.plugin_sha256',1796410444.3746902942);
INSERT INTO schema_migrations VALUES(4,'one live owner per serve application name',1796410444.3747403621);
INSERT INTO schema_migrations VALUES(5,'jobs.warnings',1796410444.374856472);
CREATE TABLE jobs (
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
, result_size INTEGER NOT NULL DEFAULT 0, plugin_sha256 TEXT NOT NULL DEFAULT '', warnings TEXT NOT NULL DEFAULT '[]');
CREATE TABLE job_params (
    job_id      TEXT PRIMARY KEY,
    params      TEXT NOT NULL
);
CREATE TABLE job_events (
    job_id    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    ts        REAL NOT NULL,
    data      TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE models (
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
CREATE TABLE serve_applications (
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
CREATE UNIQUE INDEX jobs_request_id
    ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX models_tenant ON models (tenant, id);
CREATE INDEX models_sha256 ON models (sha256);
CREATE INDEX serve_applications_endpoint
    ON serve_applications (tenant, plugin, endpoint_action);
CREATE INDEX serve_applications_name ON serve_applications (name);
