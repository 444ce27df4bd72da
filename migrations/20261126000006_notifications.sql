-- event_id UNIQUE: a redelivered Kafka event can never create a second notification.
-- No foreign key to orders: orders move to the archive, notifications stay.
CREATE TABLE notifications (
    id         BIGINT        NOT NULL AUTO_INCREMENT,
    event_id   CHAR(36)      CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    user_id    BIGINT        NOT NULL,
    order_id   BIGINT        NOT NULL,
    type       VARCHAR(64)   NOT NULL,
    message    VARCHAR(1000) NOT NULL,
    created_at DATETIME(6)   NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_notifications_event (event_id),
    KEY ix_notifications_user (user_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
