-- A console session's absolute end: CONSOLE_SESSION_MAX_SECS after its sign-in, moved by
-- nothing. `expires_at`, its idle expiry, moves forward with what the operator does but
-- never past it. Sessions from before end at their idle expiry.
ALTER TABLE console_sessions ADD COLUMN ends_at DATETIME(6) NULL AFTER expires_at;
UPDATE console_sessions SET ends_at = expires_at;
ALTER TABLE console_sessions
    MODIFY ends_at DATETIME(6) NOT NULL,
    ADD CONSTRAINT ck_console_sessions_ends CHECK (expires_at <= ends_at);
