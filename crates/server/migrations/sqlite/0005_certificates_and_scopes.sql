-- Certificates, network locations and distribution point scopes beyond groups.
-- A remote-office gateway's registration binds it to its certificate (SHA-256, hex).
ALTER TABLE gateways ADD COLUMN cert_sha256 TEXT;
-- A device's reserve certificate, issued over its authenticated connection before the
-- current one expires.
ALTER TABLE devices ADD COLUMN reserve_cert_sha256 TEXT;
ALTER TABLE devices ADD COLUMN reserve_cert_serial TEXT;
ALTER TABLE devices ADD COLUMN reserve_cert_expires_at INTEGER;
-- The network location the administrator put a device in.
ALTER TABLE devices ADD COLUMN network_location TEXT;
-- Distribution point scopes that are not groups (`location~NAME`, `broadcast-domain~own`);
-- group scopes stay in dp_scopes, tied to their group.
CREATE TABLE dp_scope_refs (
    server_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (server_id, device_id, scope),
    FOREIGN KEY (server_id, device_id) REFERENCES devices (server_id, id)
        DEFERRABLE INITIALLY DEFERRED
);
