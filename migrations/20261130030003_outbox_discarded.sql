-- An operator may discard a dead publish job: its DEAD rows become DISCARDED, never to be
-- published, and stay (visible and counted) like DEAD ones; the retention job only purges
-- PUBLISHED rows.
ALTER TABLE outbox_events
    DROP CONSTRAINT ck_outbox_status;

ALTER TABLE outbox_events
    ADD CONSTRAINT ck_outbox_status CHECK (status IN ('NEW', 'PUBLISHED', 'DEAD', 'DISCARDED'));
