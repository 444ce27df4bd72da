-- Each time a Kafka client of the pipeline was replaced because librdkafka declared it dead
-- (a fatal error: the producer fenced, the consumer's static membership fenced), by any
-- replica. The operators' queue overview shows them on the queue the client serves
-- (issue 29, docs/adr/0015-publish-retry-policy.md); the retention job purges old ones.
CREATE TABLE kafka_client_rebuilds (
    id         BIGINT        NOT NULL AUTO_INCREMENT,
    client     VARCHAR(16)   CHARACTER SET ascii NOT NULL,
    error      VARCHAR(1024) NOT NULL,
    rebuilt_at DATETIME(6)   NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY ix_kafka_client_rebuilds_client_at (client, rebuilt_at),
    CONSTRAINT ck_kafka_client_rebuilds_client CHECK (client IN ('producer', 'consumer'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
