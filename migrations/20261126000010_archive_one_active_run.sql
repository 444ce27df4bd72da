-- One archive run at a time, enforced by the database rather than by a named lock held on a
-- connection: a run is now a chain of jobs (plan → chunk jobs → summary), which no single
-- connection lives through. `active` is 1 while a run is RUNNING and NULL otherwise, and its
-- UNIQUE key admits one 1: a second run's plan cannot insert itself as RUNNING, and records
-- itself as SKIPPED, naming the run it stepped aside for in `blocked_by`.
-- `duration_ms` is the run's summary (with the counters), written once by the summary step.
-- Rows left RUNNING by the previous design, if several, keep only the newest running; the
-- others are marked SKIPPED (what they had not archived is archived by the next run: it
-- selects by cutoff, not by run).
ALTER TABLE archive_runs
    ADD COLUMN active      TINYINT     NULL DEFAULT NULL AFTER status,
    ADD COLUMN blocked_by  VARCHAR(64) NULL DEFAULT NULL,
    ADD COLUMN duration_ms BIGINT      NULL DEFAULT NULL;

ALTER TABLE archive_runs
    DROP CONSTRAINT ck_archive_runs_status;

UPDATE archive_runs r
    LEFT JOIN (SELECT MAX(id) AS id FROM archive_runs WHERE status = 'RUNNING') newest
        ON newest.id = r.id
SET r.active = IF(newest.id IS NULL, NULL, 1),
    r.status = IF(newest.id IS NULL, 'SKIPPED', 'RUNNING'),
    r.blocked_by = IF(newest.id IS NULL, 'superseded', NULL)
WHERE r.status = 'RUNNING';

ALTER TABLE archive_runs
    ADD CONSTRAINT ck_archive_runs_status CHECK (status IN ('RUNNING', 'DONE', 'SKIPPED')),
    ADD CONSTRAINT ck_archive_runs_active
        CHECK ((status = 'RUNNING' AND active = 1) OR (status <> 'RUNNING' AND active IS NULL)),
    ADD UNIQUE KEY uq_archive_runs_active (active);
