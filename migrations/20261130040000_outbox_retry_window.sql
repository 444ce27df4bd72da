-- When a row's publish first failed (transiently): the start of its retry window
-- (PUBLISH_RETRY_WINDOW_SECS, docs/adr/0015-publish-retry-policy.md). NULL: it has not failed
-- since it was written or last revived.
ALTER TABLE outbox_events
    ADD COLUMN first_failed_at DATETIME(6) NULL;

-- A publish job's claim on a row while it sends it to Kafka, instead of a row lock held
-- across the send (issue 21, finding 6): other jobs leave the row alone until the claim is
-- released or, if the claimer died, has expired.
ALTER TABLE outbox_events
    ADD COLUMN claimed_until DATETIME(6) NULL;
