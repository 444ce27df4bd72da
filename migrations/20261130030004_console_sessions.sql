-- Sessions of the web console (/console). The cookie holds a random session id; only its
-- SHA-256 is stored, so a copy of this table signs no one in. `expires_at` moves forward on
-- every request (idle expiry, CONSOLE_SESSION_IDLE_SECS); expired rows are purged by the
-- retention job.
CREATE TABLE console_sessions (
    id_hash    CHAR(64)    CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    data       TEXT        NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id_hash),
    KEY ix_console_sessions_expires (expires_at),
    CONSTRAINT ck_console_sessions_data CHECK (JSON_VALID(data))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
