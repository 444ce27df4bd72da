-- Products and their stock. Money is an integer number of minor units.
CREATE TABLE products (
    id         BIGINT       NOT NULL AUTO_INCREMENT,
    sku        VARCHAR(64)  NOT NULL,
    name       VARCHAR(200) NOT NULL,
    price      BIGINT       NOT NULL,
    created_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    UNIQUE KEY uq_products_sku (sku),
    CONSTRAINT ck_products_price CHECK (price >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- `version` is the optimistic lock; the CHECK is the database's own guarantee that no code
-- path, however buggy, can take stock below zero.
CREATE TABLE stocks (
    product_id BIGINT      NOT NULL,
    quantity   BIGINT      NOT NULL,
    version    BIGINT      NOT NULL DEFAULT 0,
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (product_id),
    CONSTRAINT fk_stocks_product FOREIGN KEY (product_id) REFERENCES products (id),
    CONSTRAINT ck_stocks_quantity CHECK (quantity >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
