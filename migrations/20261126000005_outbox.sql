-- Written in the order's own transaction; published to Kafka by the publish-outbox job.
CREATE TABLE outbox_events (
    id             BIGINT        NOT NULL AUTO_INCREMENT,
    event_id       CHAR(36)      CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    aggregate_type VARCHAR(32)   NOT NULL,
    aggregate_id   BIGINT        NOT NULL,
    event_type     VARCHAR(64)   NOT NULL,
    payload        LONGTEXT      NOT NULL,
    -- W3C trace context of the request that produced the event
    traceparent    VARCHAR(128)  NULL,
    tracestate     VARCHAR(512)  NULL,
    status         VARCHAR(16)   NOT NULL DEFAULT 'NEW',
    -- the publish-outbox job meant to carry this row (its id is chosen before the job is
    -- pushed, so the sweeper can tell a lost job from one still queued)
    job_id         VARCHAR(36)   NULL,
    attempts       INT           NOT NULL DEFAULT 0,
    last_error     VARCHAR(1000) NULL,
    created_at     DATETIME(6)   NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    published_at   DATETIME(6)   NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_outbox_event_id (event_id),
    KEY ix_outbox_status_created (status, created_at),
    KEY ix_outbox_aggregate (aggregate_type, aggregate_id),
    KEY ix_outbox_job (job_id),
    CONSTRAINT ck_outbox_status CHECK (status IN ('NEW', 'PUBLISHED', 'DEAD')),
    CONSTRAINT ck_outbox_payload CHECK (JSON_VALID(payload))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
