-- Administrator accounts (passwords as argon2id hashes) and long-lived API tokens (as
-- SHA-256 only), per server instance.
CREATE TABLE accounts (
    server_id TEXT NOT NULL REFERENCES servers (id),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('administrator', 'auditor')),
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (server_id, name)
);

CREATE TABLE api_tokens (
    server_id TEXT NOT NULL,
    id TEXT NOT NULL,
    account TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    PRIMARY KEY (server_id, id),
    FOREIGN KEY (server_id, account) REFERENCES accounts (server_id, name)
        DEFERRABLE INITIALLY DEFERRED
);
