-- Named queries of the SQLite store. Each starts with "-- name: NAME".

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: set_meta
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: job_exists
SELECT 1 FROM jobs WHERE id = :id;

-- name: insert_job
INSERT INTO jobs (id, command, cwd, owner_uid, idempotent, state, max_retries, timeout,
                  created_at, updated_at, run_at)
VALUES (:id, :command, :cwd, :owner_uid, :idempotent, 'pending', :max_retries, :timeout,
        :now, :now, :run_at)
RETURNING *;

-- name: insert_jobs
INSERT INTO jobs (id, command, cwd, owner_uid, idempotent, max_retries, timeout,
                  state, created_at, updated_at, run_at)
VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?);

-- name: get_job
SELECT * FROM jobs WHERE id = :id;

-- name: get_attempts
SELECT * FROM attempts WHERE job_seq = :seq ORDER BY attempt;

-- name: list_jobs
SELECT * FROM jobs ORDER BY seq LIMIT :limit OFFSET :offset;

-- name: list_jobs_in_state
SELECT * FROM jobs WHERE state = :state ORDER BY seq LIMIT :limit OFFSET :offset;

-- name: list_jobs_of_owner
SELECT * FROM jobs WHERE owner_uid = :owner_uid ORDER BY seq LIMIT :limit OFFSET :offset;

-- name: list_jobs_of_owner_in_state
SELECT * FROM jobs INDEXED BY jobs_owner
WHERE owner_uid = :owner_uid AND state = :state ORDER BY seq LIMIT :limit OFFSET :offset;

-- name: count_by_state
SELECT state, n FROM job_counts;

-- name: count_by_state_of_owner
SELECT state, COUNT(*) AS n FROM jobs WHERE owner_uid = :owner_uid GROUP BY state;

-- name: claim_due
-- One statement for the whole batch; each job gets its own random lease token.
UPDATE jobs
SET state = 'processing', runs = runs + 1, updated_at = :now,
    lease_owner = :owner, lease_token = lower(hex(randomblob(8))),
    lease_expires_at = :now + COALESCE(timeout, :default_timeout) + :lease_margin
WHERE seq IN (
    SELECT seq FROM jobs INDEXED BY jobs_due
    WHERE state IN ('pending', 'failed') AND run_at <= :now
    ORDER BY run_at, seq
    LIMIT :limit
)
RETURNING *;

-- name: insert_attempt
INSERT INTO attempts (job_seq, attempt, lease_owner, started_at)
VALUES (:seq, :attempt, :owner, :now);

-- name: next_due_at
SELECT run_at FROM jobs INDEXED BY jobs_due
WHERE state IN ('pending', 'failed') ORDER BY run_at, seq LIMIT 1;

-- name: leases_of
-- The lease of each job named in the JSON array :ids (checked before a batch update).
SELECT id, seq, state, lease_token, runs FROM jobs
WHERE id IN (SELECT value FROM json_each(:ids));

-- name: finish_job
UPDATE jobs
SET state = :state, attempts = :attempts, interruptions = :interruptions, run_at = :run_at,
    updated_at = :now, last_exit_code = :exit_code, last_error = :error,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE seq = :seq AND state = 'processing' AND lease_token = :token;

-- name: finish_attempt
-- A NULL :started_at keeps the start written at the claim (an interrupted attempt).
UPDATE attempts
SET started_at = COALESCE(:started_at, started_at), finished_at = :finished_at,
    exit_code = :exit_code, outcome = :outcome, error = :error, worker = :worker
WHERE job_seq = :seq AND attempt = :attempt;

-- name: release_job
UPDATE jobs
SET state = 'pending', runs = runs - 1,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE seq = :seq AND state = 'processing' AND lease_token = :token AND runs = :attempt;

-- name: delete_attempt
DELETE FROM attempts WHERE job_seq = :seq AND attempt = :attempt;

-- name: leased_jobs
SELECT * FROM jobs WHERE state = 'processing' ORDER BY seq;

-- name: leased_jobs_of_owner
SELECT * FROM jobs WHERE state = 'processing' AND lease_owner = :owner ORDER BY seq;

-- name: retry_dead
UPDATE jobs
SET state = 'pending', attempts = 0, interruptions = 0, run_at = :now, updated_at = :now,
    last_error = NULL
WHERE id = :id AND state = 'dead'
RETURNING *;

-- name: get_settings
SELECT key, value FROM settings;

-- name: set_setting
INSERT INTO settings (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: attempt_stats
SELECT outcome, COUNT(*) AS n, AVG(finished_at - started_at) AS mean_s,
       MAX(finished_at - started_at) AS max_s
FROM attempts WHERE finished_at IS NOT NULL GROUP BY outcome;
