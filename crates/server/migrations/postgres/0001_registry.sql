-- The registry: server instances, administration groups, devices, enrollment tokens,
-- gateways, distribution point scopes and their fencing epochs. Every row names the
-- (virtual) server it belongs to.
CREATE TABLE servers (
    id TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE admin_groups (
    server_id TEXT NOT NULL REFERENCES servers (id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    parent TEXT,
    PRIMARY KEY (server_id, id),
    FOREIGN KEY (server_id, parent) REFERENCES admin_groups (server_id, id)
        DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE devices (
    server_id TEXT NOT NULL,
    id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    cert_sha256 TEXT NOT NULL,
    cert_serial TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    last_seen BIGINT,
    broadcast_domain TEXT,
    os_class TEXT,
    free_disk_bytes BIGINT,
    enrolled_with TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (server_id, id),
    FOREIGN KEY (server_id, group_id) REFERENCES admin_groups (server_id, id)
        DEFERRABLE INITIALLY DEFERRED
);
CREATE UNIQUE INDEX devices_by_certificate ON devices (cert_sha256);

CREATE TABLE enrollment_tokens (
    server_id TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    group_id TEXT NOT NULL,
    device_id TEXT,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (server_id, token_sha256),
    FOREIGN KEY (server_id, group_id) REFERENCES admin_groups (server_id, id)
        DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE gateways (
    server_id TEXT NOT NULL REFERENCES servers (id),
    id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('remote_office', 'dmz')),
    device_id TEXT,
    addr TEXT,
    dns_names TEXT,
    PRIMARY KEY (server_id, id)
);

CREATE TABLE dp_scopes (
    server_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (server_id, device_id, group_id),
    FOREIGN KEY (server_id, device_id) REFERENCES devices (server_id, id)
        DEFERRABLE INITIALLY DEFERRED,
    FOREIGN KEY (server_id, group_id) REFERENCES admin_groups (server_id, id)
        DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE dp_epochs (
    server_id TEXT NOT NULL REFERENCES servers (id),
    scope TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    PRIMARY KEY (server_id, scope)
);

-- Markers of one-time steps (the import of a registry file).
CREATE TABLE server_meta (
    server_id TEXT NOT NULL REFERENCES servers (id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (server_id, key)
);
