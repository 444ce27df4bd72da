-- Every change of a product's stock that is not an order: the initial stock at creation and
-- each admin adjustment, written in the same transaction as the stock change. With it the
-- audit (docs/adr/0017-audit.md) checks that stock is conserved:
--   stocks.quantity = SUM(delta) - units of the orders not cancelled (live and archived).
-- Orders themselves write nothing here: their units are read back from order_items, so the
-- order path keeps its statements.
CREATE TABLE stock_adjustments (
    id         BIGINT      NOT NULL AUTO_INCREMENT,
    product_id BIGINT      NOT NULL,
    delta      BIGINT      NOT NULL,
    reason     VARCHAR(16) NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (id),
    KEY ix_stock_adjustments_product (product_id, id),
    CONSTRAINT fk_stock_adjustments_product FOREIGN KEY (product_id) REFERENCES products (id),
    CONSTRAINT ck_stock_adjustments_reason CHECK (reason IN ('INITIAL', 'ADJUST')),
    CONSTRAINT ck_stock_adjustments_initial CHECK (reason <> 'INITIAL' OR delta >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Products that exist before this table: their history of adjustments is unknown, so the
-- baseline is what makes the equation hold today (current stock plus the units their orders
-- still hold); from here on every change is recorded.
INSERT INTO stock_adjustments (product_id, delta, reason)
SELECT s.product_id,
       s.quantity
         + COALESCE((SELECT SUM(i.quantity) FROM order_items i JOIN orders o ON o.id = i.order_id
                     WHERE i.product_id = s.product_id AND o.status <> 'CANCELLED'), 0)
         + COALESCE((SELECT SUM(i.quantity) FROM order_items_archive i
                     JOIN orders_archive o ON o.id = i.order_id
                     WHERE i.product_id = s.product_id AND o.status <> 'CANCELLED'), 0),
       'INITIAL'
FROM stocks s;

-- The audit counts the notifications of an order whose outbox rows the retention purged;
-- written by the notification job, never by the order path.
CREATE INDEX ix_notifications_order ON notifications (order_id, type);
