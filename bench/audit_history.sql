-- A large history for measuring `orderflow audit` (bench/README.md, "The audit"): on a
-- migrated, empty database, @live CREATED orders (outbox rows PUBLISHED, notified) and
-- @archived COMPLETED orders in the archive (their outbox rows purged by the retention, their
-- notifications kept), one line each over 100 products, stock consistent with all of it, one
-- idempotency key per live order. Every invariant holds, so the audit reads everything.
-- Usage: mysql -h127.0.0.1 -uroot DB -e "SET @live=500000, @archived=500000; SOURCE bench/audit_history.sql;"
-- (MariaDB: uses its seq_1_to_N tables.)

INSERT INTO users (id, email, password_hash, name) VALUES (1, 'bench@orderflow.test', 'x', 'bench');
INSERT INTO products (id, sku, name, price)
  SELECT seq, CONCAT('AUDIT-', seq), 'bench', 100 FROM seq_1_to_100;

SET @sql = CONCAT('INSERT INTO orders (id, user_id, status, total_amount) ',
  'SELECT seq, 1, ''CREATED'', 100 FROM seq_1_to_', @live);
PREPARE s FROM @sql; EXECUTE s;
INSERT INTO order_items (order_id, product_id, quantity, unit_price)
  SELECT id, id % 100 + 1, 1, 100 FROM orders;
INSERT INTO outbox_events (event_id, aggregate_type, aggregate_id, event_type, payload, status, published_at)
  SELECT UUID(), 'ORDER', id, 'ORDER_CREATED', '{}', 'PUBLISHED', CURRENT_TIMESTAMP(6) FROM orders;
INSERT INTO notifications (event_id, user_id, order_id, type, message)
  SELECT event_id, 1, aggregate_id, 'ORDER_CREATED', 'bench' FROM outbox_events;
INSERT INTO idempotency_keys (user_id, idem_key, request_fingerprint, response_status, order_id, expires_at)
  SELECT 1, CONCAT('k', id), REPEAT('0', 64), 201, id, CURRENT_TIMESTAMP(6) + INTERVAL 1 DAY FROM orders;

SET @sql = CONCAT('INSERT INTO orders_archive (id, user_id, status, total_amount, created_at, updated_at) ',
  'SELECT ', @live, ' + seq, 1, ''COMPLETED'', 100, CURRENT_TIMESTAMP(6), CURRENT_TIMESTAMP(6) FROM seq_1_to_', @archived);
PREPARE s FROM @sql; EXECUTE s;
INSERT INTO order_items_archive (order_id, product_id, quantity, unit_price)
  SELECT id, id % 100 + 1, 1, 100 FROM orders_archive;
INSERT INTO notifications (event_id, user_id, order_id, type, message)
  SELECT UUID(), 1, id, 'ORDER_CREATED', 'bench' FROM orders_archive;

INSERT INTO stocks (product_id, quantity) SELECT id, 1000000 FROM products;
INSERT INTO stock_adjustments (product_id, delta, reason)
  SELECT p.id, 1000000 + (SELECT COUNT(*) FROM order_items i WHERE i.product_id = p.id)
                       + (SELECT COUNT(*) FROM order_items_archive i WHERE i.product_id = p.id), 'INITIAL'
  FROM products p;
