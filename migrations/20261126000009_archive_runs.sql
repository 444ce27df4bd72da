-- One row per archive run (run_key: the day for the daily schedule, unique for manual runs).
-- The cutoff is fixed when the run starts, and each chunk's transaction advances
-- last_order_id and the counters, so a run that crashed resumes where its last committed
-- chunk ended and archives exactly the same set.
CREATE TABLE archive_runs (
    id              BIGINT      NOT NULL AUTO_INCREMENT,
    run_key         VARCHAR(64) NOT NULL,
    cutoff          DATETIME(6) NOT NULL,
    chunk_size      INT         NOT NULL,
    status          VARCHAR(16) NOT NULL DEFAULT 'RUNNING',
    last_order_id   BIGINT      NOT NULL DEFAULT 0,
    chunks          INT         NOT NULL DEFAULT 0,
    orders_archived BIGINT      NOT NULL DEFAULT 0,
    items_archived  BIGINT      NOT NULL DEFAULT 0,
    started_at      DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    finished_at     DATETIME(6) NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_archive_runs_key (run_key),
    CONSTRAINT ck_archive_runs_status CHECK (status IN ('RUNNING', 'DONE'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
