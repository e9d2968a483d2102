-- A remote-office gateway's registration binds it to its certificate (SHA-256, hex).
ALTER TABLE gateways ADD COLUMN cert_sha256 TEXT;
