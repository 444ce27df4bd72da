-- Text columns use the case-insensitive utf8mb4_unicode_ci (present in MySQL 8 and MariaDB):
-- sqlx reads *_bin columns as VARBINARY and refuses them as strings. It also makes the UNIQUE
-- keys on email and sku case-insensitive, which is what a person means by "the same".
-- Accounts. Emails are stored lower-cased by the service as well.
CREATE TABLE users (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    email         VARCHAR(254) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    name          VARCHAR(100) NOT NULL,
    role          VARCHAR(16)  NOT NULL DEFAULT 'USER',
    created_at    DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_users_email (email),
    CONSTRAINT ck_users_role CHECK (role IN ('USER', 'ADMIN'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
