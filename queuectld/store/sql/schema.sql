-- queuectl SQLite schema, version 5. Applied in one transaction by SQLiteStore.open() to a
-- new database; migrate_2.sql .. migrate_5.sql bring older databases here.

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
    memory_max       INTEGER,                     -- limits (NULL: none): bytes of memory,
    cpus             REAL,                        -- CPUs,
    max_procs        INTEGER,                     -- processes (docs/jobs.md)
    state            TEXT NOT NULL
                     CHECK (state IN ('pending', 'waiting', 'blocked', 'processing', 'completed',
                                      'failed', 'dead', 'cancelled')),
    queue            TEXT NOT NULL DEFAULT 'default',
    priority         INTEGER NOT NULL DEFAULT 0,  -- higher first
    unique_key       TEXT,                        -- one unfinished job per key
    env              TEXT,                        -- JSON object of the job's own variables
    backoff_base     REAL,                        -- NULL: follow the settings of that name
    backoff_max      REAL,
    jitter           REAL,
    attempts         INTEGER NOT NULL DEFAULT 0,  -- charged attempts (completions, failures)
    interruptions    INTEGER NOT NULL DEFAULT 0,  -- attempts cut short by a crash or a drain
    runs             INTEGER NOT NULL DEFAULT 0,  -- rows in the attempts history
    max_retries      INTEGER,                     -- NULL: follow the max-retries setting
    timeout          REAL,                        -- NULL: follow the default-timeout setting
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    run_at           REAL NOT NULL,               -- when a waiting/failed job becomes due
    last_exit_code   INTEGER,
    last_error       TEXT,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at REAL,
    n_parents        INTEGER NOT NULL DEFAULT 0   -- rows in job_deps naming it the child
);

-- Claiming reads this partial index only: one B-tree descent per queue, in claim order
-- (priority, then the time the job became due, then arrival), whatever the number of
-- jobs waiting or finished.
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (queue, priority DESC, run_at, seq)
    WHERE state = 'pending';
-- Jobs waiting for a time (a delay, a retry): the claim makes the due ones pending.
CREATE INDEX IF NOT EXISTS jobs_timed ON jobs (run_at) WHERE state IN ('waiting', 'failed');
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner_uid, state, seq);
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (lease_owner, lease_expires_at)
    WHERE state = 'processing';
-- Two enqueues with one key cannot both win: the index refuses the second unfinished job.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL
      AND state IN ('pending', 'waiting', 'blocked', 'processing', 'failed');
-- Retention and purge: finished jobs of one state, oldest first.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (state, updated_at)
    WHERE state IN ('completed', 'cancelled', 'dead');

-- Dependencies: the child runs once its parents are done (`enqueue --after`). Rows go
-- with either job (a parent is purged only once its children are final).
CREATE TABLE IF NOT EXISTS job_deps (
    child_seq   INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    parent_seq  INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
    pos         INTEGER NOT NULL,            -- the order the parents were given in
    any_outcome INTEGER NOT NULL DEFAULT 0,  -- 1: `after_any`, any final state will do
    PRIMARY KEY (child_seq, parent_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_deps_parent ON job_deps (parent_seq, child_seq);

-- Recurring schedules (`queuectl schedule add`). A tick's job has an id made of the
-- schedule's name and the tick's time, and is stored in the transaction that moves
-- next_at past the tick: a tick fires once, whatever crashes.
CREATE TABLE IF NOT EXISTS schedules (
    name       TEXT PRIMARY KEY,
    cron       TEXT NOT NULL,
    tz         TEXT NOT NULL,
    job        TEXT NOT NULL,               -- JSON: the enqueue request of every tick
    overlap    TEXT NOT NULL,
    catch_up   TEXT NOT NULL,
    paused     INTEGER NOT NULL DEFAULT 0,
    owner_uid  INTEGER,
    created_at REAL NOT NULL,
    next_at    REAL NOT NULL,               -- the next tick not yet handled
    last_at    REAL,                        -- the last tick that made a job
    last_job   TEXT                         -- that job's id
);

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
    cpu_seconds REAL,     -- user + system time of all its processes
    peak_bytes  INTEGER,  -- peak memory (the cgroup's, else its largest process's)
    PRIMARY KEY (job_seq, attempt)
) WITHOUT ROWID;

-- Named queues' settings (`queuectl queue set/pause`) and their rate limit's token
-- bucket. A queue without a row has no limits.
CREATE TABLE IF NOT EXISTS queues (
    name        TEXT PRIMARY KEY,
    concurrency INTEGER,            -- NULL: no limit on running jobs
    rate_count  INTEGER,            -- NULL: no rate limit; else starts per rate_period
    rate_period REAL,
    paused      INTEGER NOT NULL DEFAULT 0,
    tokens      REAL,               -- the bucket: starts left (NULL: full)
    tokens_at   REAL                -- when `tokens` was last worked out
);

-- Per-queue, per-state counts kept by triggers, so `status` and the claim's limits cost
-- the same at any queue size.
CREATE TABLE IF NOT EXISTS job_counts (
    queue TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS jobs_count_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
    ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
END;
CREATE TRIGGER IF NOT EXISTS jobs_count_update AFTER UPDATE OF state, queue ON jobs
    WHEN OLD.state <> NEW.state OR OLD.queue <> NEW.queue BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
    INSERT INTO job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1)
    ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

-- Cluster membership: the daemons using this store (one for SQLite). A daemon's name is
-- the lease owner of the jobs it runs; `running` (Store.nodes) counts them.
CREATE TABLE IF NOT EXISTS nodes (
    name         TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,     -- this start of it: a restart registers again
    heartbeat_at REAL NOT NULL,
    slots        INTEGER NOT NULL,  -- jobs it may run at once
    socket       TEXT NOT NULL,     -- its control socket (job logs are fetched there)
    stopped_at   REAL,              -- a clean stop
    rescued_at   REAL               -- a survivor took its jobs back
);
