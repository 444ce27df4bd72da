-- The retention job deletes by age every few minutes (RETENTION_CRON). Without these, each
-- batch scanned every PUBLISHED outbox row or every Done job for its age (6 s for the jobs
-- under bench load), competing with the pipeline's own queries on the same tables.
CREATE INDEX ix_outbox_status_published ON outbox_events (status, published_at);
CREATE INDEX ix_jobs_status_done ON jobs (status, done_at);
