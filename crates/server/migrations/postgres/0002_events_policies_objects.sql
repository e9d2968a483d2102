-- Events (the agents' and the server's own) with retention, security issues per device,
-- policy objects (the source of truth for settings), and published update objects.
CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    server_id TEXT NOT NULL REFERENCES servers (id),
    received_at BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    device_id TEXT,
    device_seq BIGINT,
    severity BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_by_age ON events (received_at);

CREATE TABLE security_issues (
    server_id TEXT NOT NULL REFERENCES servers (id),
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity BIGINT NOT NULL,
    opened_at BIGINT NOT NULL,
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
    version BIGINT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    PRIMARY KEY (server_id, id)
);
