-- The SQLite schema of version 1 (queuectl before job control), kept to test the migration.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Queue settings changed at run time (`queuectl config set`, worker count).
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- enqueue order
    id               TEXT NOT NULL UNIQUE,
    command          TEXT NOT NULL,
    cwd              TEXT,                        -- where the command runs (NULL: daemon's home)
    owner_uid        INTEGER,                     -- who enqueued it (peer credentials)
    idempotent       INTEGER NOT NULL DEFAULT 1,  -- 0: never re-run after an interruption
    state            TEXT NOT NULL
                     CHECK (state IN ('pending', 'processing', 'completed', 'failed', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,  -- charged attempts (completions, failures)
    interruptions    INTEGER NOT NULL DEFAULT 0,  -- attempts cut short by a crash or a drain
    runs             INTEGER NOT NULL DEFAULT 0,  -- rows in the attempts history
    max_retries      INTEGER,                     -- NULL: follow the max-retries setting
    timeout          REAL,                        -- NULL: follow the default-timeout setting
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    run_at           REAL NOT NULL,               -- next time the job may be claimed
    last_exit_code   INTEGER,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at REAL
);

-- Claiming reads this partial index only: its cost does not grow with completed jobs,
-- and it is a B-tree descent, not a scan, however many jobs are waiting.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (run_at, seq) WHERE state IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner_uid, state, seq);
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_owner, lease_expires_at)
    WHERE state = 'processing';

CREATE TABLE IF NOT EXISTS attempts (
    job_seq     INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    lease_owner TEXT,
    worker      TEXT,
    started_at  REAL NOT NULL,
    finished_at REAL,
    exit_code   INTEGER,
    outcome     TEXT,
    error       TEXT,
    PRIMARY KEY (job_seq, attempt)
) WITHOUT ROWID;

-- Per-state counts kept by triggers, so `status` costs the same at any queue size.
CREATE TABLE IF NOT EXISTS job_counts (
    state TEXT PRIMARY KEY,
    n     INTEGER NOT NULL
);
INSERT OR IGNORE INTO job_counts (state, n) VALUES
    ('pending', 0), ('processing', 0), ('completed', 0), ('failed', 0), ('dead', 0);

CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN
    UPDATE job_counts SET n = n + 1 WHERE state = NEW.state;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF state ON jobs
    WHEN OLD.state <> NEW.state BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
    UPDATE job_counts SET n = n + 1 WHERE state = NEW.state;
END;
