-- Device tags (comma-separated ids) and certificate expiry; acknowledged security issues.
ALTER TABLE devices ADD COLUMN tags TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN cert_expires_at BIGINT;
ALTER TABLE security_issues ADD COLUMN acknowledged_at BIGINT;
ALTER TABLE security_issues ADD COLUMN acknowledged_by TEXT;
