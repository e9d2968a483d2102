-- Events (the agents' and the server's own) with retention, security issues per device,
-- policy objects (the source of truth for settings), and published update objects.
CREATE TABLE events (
    seq INTEGER PRIMARY KEY NOT NULL,
    server_id TEXT NOT NULL REFERENCES servers (id),
    received_at INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    device_id TEXT,
    device_seq INTEGER,
    severity INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_by_age ON events (received_at);

CREATE TABLE security_issues (
    server_id TEXT NOT NULL REFERENCES servers (id),
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity INTEGER NOT NULL,
    opened_at INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (server_id, device_id, kind)
);

CREATE TABLE policy_objects (
    server_id TEXT NOT NULL REFERENCES servers (id),
    kind TEXT NOT NULL CHECK (kind IN ('schema', 'group', 'policy', 'device')),
    id TEXT NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (server_id, kind, id)
);

CREATE TABLE update_objects (
    server_id TEXT NOT NULL REFERENCES servers (id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (server_id, id)
);
