-- Operators' state of a queue, shared by every replica: a paused queue is not fetched from
-- (each process reads this table every JOB_POLL_INTERVAL_MS). A queue without a row is
-- running; the row survives restarts.
CREATE TABLE job_queues (
    queue      VARCHAR(200) NOT NULL,
    paused     TINYINT(1)   NOT NULL DEFAULT 0,
    changed_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    changed_by VARCHAR(254) NOT NULL,
    PRIMARY KEY (queue),
    CONSTRAINT ck_job_queues_paused CHECK (paused IN (0, 1))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
