-- One row per (user, Idempotency-Key). The UNIQUE key is what makes a duplicate order
-- impossible: a concurrent second insert waits on the first one's lock and then fails.
-- The row is written in the same transaction as the order, so it exists iff the first
-- request's outcome (order or business refusal) was committed.
-- idem_key is case-sensitive (ascii_bin): "Abc" and "abc" are different keys.
CREATE TABLE idempotency_keys (
    id                  BIGINT       NOT NULL AUTO_INCREMENT,
    user_id             BIGINT       NOT NULL,
    idem_key            VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    request_fingerprint CHAR(64)     CHARACTER SET ascii COLLATE ascii_general_ci NOT NULL,
    response_status     SMALLINT     NULL,
    response_body       MEDIUMTEXT   NULL,
    order_id            BIGINT       NULL,
    created_at          DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    expires_at          DATETIME(6)  NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_idempotency_user_key (user_id, idem_key),
    KEY ix_idempotency_expires (expires_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
