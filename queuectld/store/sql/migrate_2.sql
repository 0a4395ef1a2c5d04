-- Schema version 1 -> 2 (job control): new states (waiting, cancelled), queues,
-- priorities, unique keys, job environment, per-job retry policy, per-queue counts.
-- SQLite cannot change a CHECK constraint in place: the jobs table is rebuilt. Run in one
-- transaction by SQLiteStore.open(), with foreign keys off, before schema.sql.

CREATE TABLE jobs_v2 (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    command          TEXT NOT NULL,
    cwd              TEXT,
    owner_uid        INTEGER,
    idempotent       INTEGER NOT NULL DEFAULT 1,
    state            TEXT NOT NULL
                     CHECK (state IN ('pending', 'waiting', 'processing', 'completed', 'failed',
                                      'dead', 'cancelled')),
    queue            TEXT NOT NULL DEFAULT 'default',
    priority         INTEGER NOT NULL DEFAULT 0,
    unique_key       TEXT,
    env              TEXT,
    backoff_base     REAL,
    backoff_max      REAL,
    jitter           REAL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    interruptions    INTEGER NOT NULL DEFAULT 0,
    runs             INTEGER NOT NULL DEFAULT 0,
    max_retries      INTEGER,
    timeout          REAL,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    run_at           REAL NOT NULL,
    last_exit_code   INTEGER,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at REAL
);

-- A version-1 pending job with a later run_at was delayed: it is waiting now.
INSERT INTO jobs_v2 (seq, id, command, cwd, owner_uid, idempotent, state, attempts,
                     interruptions, runs, max_retries, timeout, created_at, updated_at, run_at,
                     last_exit_code, last_error, lease_owner, lease_token, lease_expires_at)
SELECT seq, id, command, cwd, owner_uid, idempotent,
       CASE WHEN state = 'pending' AND run_at > updated_at THEN 'waiting' ELSE state END,
       attempts, interruptions, runs, max_retries, timeout, created_at, updated_at, run_at,
       last_exit_code, last_error, lease_owner, lease_token, lease_expires_at
FROM jobs;

DROP TRIGGER IF EXISTS jobs_count_insert;
DROP TRIGGER IF EXISTS jobs_count_delete;
DROP TRIGGER IF EXISTS jobs_count_update;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
DROP TABLE job_counts;
