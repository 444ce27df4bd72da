-- Every operator action on the job engine (retry, bulk retry, discard, bulk discard, pause,
-- resume), from the API, the console or the CLI: who, what, on which jobs or filter, how
-- many it changed, when. Written in the action's own transaction where the action is one
-- transaction; after the last job for a bulk action.
CREATE TABLE operator_audit (
    id            BIGINT       NOT NULL AUTO_INCREMENT,
    at            DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    via           VARCHAR(8)   NOT NULL,
    actor_user_id BIGINT       NULL,
    actor         VARCHAR(254) NOT NULL,
    action        VARCHAR(16)  NOT NULL,
    target        LONGTEXT     NOT NULL,
    affected      INT          NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT ck_operator_audit_via CHECK (via IN ('api', 'console', 'cli')),
    CONSTRAINT ck_operator_audit_action
        CHECK (action IN ('retry', 'bulk_retry', 'discard', 'bulk_discard', 'pause', 'resume')),
    CONSTRAINT ck_operator_audit_affected CHECK (affected >= 0),
    CONSTRAINT ck_operator_audit_target CHECK (JSON_VALID(target)),
    -- an action through the API or the console is an account's; the CLI's is not
    CONSTRAINT ck_operator_audit_actor CHECK ((via = 'cli') = (actor_user_id IS NULL))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
