-- The history of failed job attempts, every queue alike: one row per attempt that ended in
-- an error (retried or final), written by the engine when the attempt is finished. A
-- successful attempt writes nothing here. Rows live as long as their job (ON DELETE CASCADE:
-- the retention job's purge of a Done job takes its history with it).
-- No UNIQUE (job_id, attempt): an operator's retry starts the count again at 1, and the
-- history keeps the earlier rounds.
CREATE TABLE job_attempts (
    id          BIGINT        NOT NULL AUTO_INCREMENT,
    job_id      VARCHAR(36)   NOT NULL,
    queue       VARCHAR(200)  NOT NULL,
    attempt     INT           NOT NULL,
    started_at  DATETIME(6)   NOT NULL,
    finished_at DATETIME(6)   NOT NULL,
    outcome     VARCHAR(8)    NOT NULL,
    error       VARCHAR(2000) NOT NULL,
    -- the apalis worker (workers.id) that ran the attempt
    worker      VARCHAR(36)   NULL,
    -- W3C trace id of the attempt's span (32 hex digits)
    trace_id    CHAR(32)      CHARACTER SET ascii COLLATE ascii_general_ci NULL,
    PRIMARY KEY (id),
    KEY ix_job_attempts_job (job_id, id),
    CONSTRAINT fk_job_attempts_job FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE,
    CONSTRAINT ck_job_attempts_outcome CHECK (outcome IN ('retry', 'dead')),
    CONSTRAINT ck_job_attempts_attempt CHECK (attempt >= 1),
    CONSTRAINT ck_job_attempts_times CHECK (finished_at >= started_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
