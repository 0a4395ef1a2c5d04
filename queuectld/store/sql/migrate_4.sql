-- Schema version 3 -> 4 (workflows): the `blocked` state and each job's parent count
-- (dependencies), job_deps and schedules (created by schema.sql afterwards).
-- SQLite cannot change a CHECK constraint in place: the jobs table is rebuilt. Run in one
-- transaction by SQLiteStore.open(), with foreign keys off, before schema.sql.

CREATE TABLE jobs_v4 (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    command          TEXT NOT NULL,
    cwd              TEXT,
    owner_uid        INTEGER,
    idempotent       INTEGER NOT NULL DEFAULT 1,
    memory_max       INTEGER,
    cpus             REAL,
    max_procs        INTEGER,
    state            TEXT NOT NULL
                     CHECK (state IN ('pending', 'waiting', 'blocked', 'processing', 'completed',
                                      'failed', 'dead', 'cancelled')),
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
    lease_expires_at REAL,
    n_parents        INTEGER NOT NULL DEFAULT 0
);

INSERT INTO jobs_v4 (seq, id, command, cwd, owner_uid, idempotent, memory_max, cpus, max_procs,
                     state, queue, priority,
                     unique_key, env, backoff_base, backoff_max, jitter, attempts,
                     interruptions, runs, max_retries, timeout, created_at, updated_at, run_at,
                     last_exit_code, last_error, lease_owner, lease_token, lease_expires_at)
SELECT seq, id, command, cwd, owner_uid, idempotent, memory_max, cpus, max_procs,
       state, queue, priority,
       unique_key, env, backoff_base, backoff_max, jitter, attempts,
       interruptions, runs, max_retries, timeout, created_at, updated_at, run_at,
       last_exit_code, last_error, lease_owner, lease_token, lease_expires_at
FROM jobs;

DROP TRIGGER IF EXISTS jobs_count_insert;
DROP TRIGGER IF EXISTS jobs_count_delete;
DROP TRIGGER IF EXISTS jobs_count_update;
DROP TABLE jobs;
ALTER TABLE jobs_v4 RENAME TO jobs;
