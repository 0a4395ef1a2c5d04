-- Schema version 2 -> 3: job limits and attempt accounting (issue 13).
-- Run before schema.sql on an older file, in the same transaction.

ALTER TABLE jobs ADD COLUMN memory_max INTEGER;
ALTER TABLE jobs ADD COLUMN cpus REAL;
ALTER TABLE jobs ADD COLUMN max_procs INTEGER;
ALTER TABLE attempts ADD COLUMN cpu_seconds REAL;
ALTER TABLE attempts ADD COLUMN peak_bytes INTEGER;
