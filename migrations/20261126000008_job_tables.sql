-- The job tables of apalis-mysql 1.0.0-rc.8, owned here instead of by apalis' bundled
-- migrations: those use MySQL 8's utf8mb4_0900_ai_ci collation, which MariaDB rejects.
-- This is the schema apalis' migrations arrive at (through 20260508124246_idempotency_key),
-- with these deliberate differences (docs/adr/0004-job-engine.md):
--  * column ORDER matters: apalis decodes `SELECT *` by position, so it follows upstream's;
--  * utf8mb4_unicode_ci, which MySQL 8 and MariaDB 10.11 both have (and sqlx reads as text);
--  * last_result is MEDIUMTEXT: a result longer than upstream's VARCHAR(1000) made the final
--    status update fail and left the job Running forever;
--  * no FOREIGN KEY lock_by -> workers ON DELETE CASCADE: apalis never clears lock_by, so
--    removing a worker row would silently delete its dead jobs, the operators' dead letters.
-- Keep in step with apalis-mysql when its pinned version changes.
CREATE TABLE workers (
    id           VARCHAR(36)   NOT NULL,
    worker_type  VARCHAR(200)  NOT NULL,
    storage_name VARCHAR(200)  NOT NULL,
    layers       VARCHAR(1000) NOT NULL DEFAULT '',
    last_seen    TIMESTAMP     NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
    started_at   TIMESTAMP     NULL DEFAULT NULL,
    PRIMARY KEY (id),
    KEY WTIdx (worker_type),
    KEY LSIdx (last_seen)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

CREATE TABLE jobs (
    id              VARCHAR(36)  NOT NULL,
    job_type        VARCHAR(200) NOT NULL,
    status          VARCHAR(20)  NOT NULL DEFAULT 'Pending',
    attempts        INT          NOT NULL DEFAULT 0,
    max_attempts    INT          NOT NULL DEFAULT 25,
    run_at          TIMESTAMP    NULL DEFAULT CURRENT_TIMESTAMP,
    last_result     MEDIUMTEXT   NULL,
    lock_at         TIMESTAMP    NULL DEFAULT NULL,
    lock_by         VARCHAR(36)  NULL DEFAULT NULL,
    done_at         TIMESTAMP    NULL DEFAULT NULL,
    priority        INT          NOT NULL DEFAULT 0,
    job             LONGBLOB     NOT NULL,
    metadata        JSON         NULL,
    idempotency_key VARCHAR(36)  NULL,
    PRIMARY KEY (id),
    KEY job_status (status),
    KEY LIdx (lock_by),
    KEY JTIdx (job_type),
    KEY JRTIdx (run_at),
    KEY LCATIdx (lock_at),
    KEY idx_jobs_fetch (job_type, status, run_at, priority, id),
    UNIQUE KEY idx_jobs_idempotency_key (job_type, idempotency_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
