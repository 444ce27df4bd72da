-- Idempotency-Keys are compared byte for byte (issue 22). ascii_bin is a PAD SPACE
-- collation: "abc " and "abc" compared equal, so two keys that differ only by trailing
-- spaces (which the quoted form of the header keeps) were one key, and the second request
-- got the first one's replay or 422. A VARBINARY column compares bytes with no padding, on
-- MySQL 8 and MariaDB 10.11 alike (MariaDB's *_nopad_bin collations do not exist on MySQL).
-- Keys are printable ASCII (checked at the edge), so every stored key keeps its bytes, and
-- keys unique under padding are unique as bytes: the UNIQUE key cannot fail here.
ALTER TABLE idempotency_keys MODIFY idem_key VARBINARY(255) NOT NULL;
