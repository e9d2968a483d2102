-- A remote-office gateway's registration binds it to its certificate (SHA-256, hex).
ALTER TABLE gateways ADD COLUMN cert_sha256 TEXT;
-- A device's reserve certificate, issued over its authenticated connection before the
-- current one expires.
ALTER TABLE devices ADD COLUMN reserve_cert_sha256 TEXT;
ALTER TABLE devices ADD COLUMN reserve_cert_serial TEXT;
ALTER TABLE devices ADD COLUMN reserve_cert_expires_at BIGINT;
