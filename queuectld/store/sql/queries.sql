-- Named queries of the SQLite store. Each starts with "-- name: NAME".

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: set_meta
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: next_job_number
SELECT value FROM meta WHERE key = 'next_job_number';

-- name: job_exists
SELECT 1 FROM jobs WHERE id = :id;

-- name: insert_jobs
INSERT INTO jobs (id, command, cwd, owner_uid, idempotent, max_retries, timeout, state,
                  queue, priority, unique_key, env, backoff_base, backoff_max, jitter,
                  memory_max, cpus, max_procs, created_at, updated_at, run_at, n_parents)
VALUES (:id, :command, :cwd, :owner_uid, :idempotent, :max_retries, :timeout, :state,
        :queue, :priority, :unique_key, :env, :backoff_base, :backoff_max, :jitter,
        :memory_max, :cpus, :max_procs, :now, :now, :run_at, :n_parents);

-- name: insert_dependency
INSERT INTO job_deps (child_seq, parent_seq, pos, any_outcome)
SELECT c.seq, p.seq, :pos, :any_outcome FROM jobs c JOIN jobs p ON p.id = :parent
WHERE c.id = :child;

-- name: parents_of
-- The parents of each job named in the JSON array :ids, in the order they were given.
SELECT c.id AS child, p.id, p.state, p.last_exit_code, d.any_outcome
FROM jobs c JOIN job_deps d ON d.child_seq = c.seq JOIN jobs p ON p.seq = d.parent_seq
WHERE c.id IN (SELECT value FROM json_each(:ids))
ORDER BY c.seq, d.pos;

-- name: children_of
SELECT c.id FROM jobs p JOIN job_deps d ON d.parent_seq = p.seq JOIN jobs c ON c.seq = d.child_seq
WHERE p.id = :id ORDER BY c.seq;

-- name: blocked_children
-- The blocked children of the jobs named in the JSON array :ids.
SELECT DISTINCT c.id FROM jobs p JOIN job_deps d ON d.parent_seq = p.seq
JOIN jobs c ON c.seq = d.child_seq
WHERE p.id IN (SELECT value FROM json_each(:ids)) AND c.state = 'blocked';

-- name: unblock_jobs
-- Blocked jobs whose parents are done: ready now, or waiting for their own time.
UPDATE jobs
SET state = CASE WHEN run_at > :now THEN 'waiting' ELSE 'pending' END, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'blocked'
RETURNING *;

-- name: block_jobs
-- Retried jobs with parents wait for them again.
UPDATE jobs SET state = 'blocked'
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'pending' AND n_parents > 0
RETURNING id;

-- name: purge_candidates
-- Finished jobs of one state last changed before :before, oldest first, after the
-- (updated_at, seq) position :after_at, :after_seq; a job with unfinished children stays.
SELECT j.seq, j.id, j.updated_at FROM jobs j INDEXED BY jobs_finished
WHERE j.state = :state AND j.state IN ('completed', 'cancelled', 'dead')
  AND j.updated_at < :before
  AND (j.updated_at, j.seq) > (:after_at, :after_seq)
  AND (:queue IS NULL OR j.queue = :queue)
  AND NOT EXISTS (
      SELECT 1 FROM job_deps d JOIN jobs c ON c.seq = d.child_seq
      WHERE d.parent_seq = j.seq AND c.state NOT IN ('completed', 'cancelled', 'dead'))
ORDER BY j.updated_at, j.seq LIMIT :limit;

-- name: delete_jobs
-- Their attempts and dependency rows go with them (ON DELETE CASCADE).
DELETE FROM jobs WHERE seq IN (SELECT value FROM json_each(:seqs));

-- name: incremental_vacuum
PRAGMA incremental_vacuum;

-- name: freelist_count
PRAGMA freelist_count;

-- name: auto_vacuum
PRAGMA auto_vacuum;

-- name: set_auto_vacuum_incremental
PRAGMA auto_vacuum = INCREMENTAL;

-- name: vacuum
VACUUM;

-- name: schedules
SELECT * FROM schedules ORDER BY name;

-- name: get_schedule
SELECT * FROM schedules WHERE name = :name;

-- name: insert_schedule
INSERT INTO schedules (name, cron, tz, job, overlap, catch_up, paused, owner_uid, created_at,
                       next_at)
VALUES (:name, :cron, :tz, :job, :overlap, :catch_up, :paused, :owner_uid, :now, :next_at);

-- name: replace_schedule
-- A changed schedule keeps its history (last tick, last job).
UPDATE schedules
SET cron = :cron, tz = :tz, job = :job, overlap = :overlap, catch_up = :catch_up,
    owner_uid = :owner_uid, next_at = :next_at
WHERE name = :name;

-- name: delete_schedule
DELETE FROM schedules WHERE name = :name;

-- name: set_schedule_paused
UPDATE schedules SET paused = :paused, next_at = :next_at WHERE name = :name;

-- name: schedule_progress
UPDATE schedules
SET next_at = :next_at, last_at = COALESCE(:last_at, last_at),
    last_job = COALESCE(:last_job, last_job)
WHERE name = :name;

-- name: next_schedule_at
SELECT MIN(next_at) AS at FROM schedules WHERE paused = 0;

-- name: unfinished_with_keys
-- The unfinished job holding each unique key named in the JSON array :keys.
SELECT * FROM jobs
WHERE unique_key IN (SELECT value FROM json_each(:keys))
  AND state IN ('pending', 'waiting', 'blocked', 'processing', 'failed');

-- name: jobs_by_ids
SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(:ids));

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

-- name: list_jobs_filtered_oldest
-- Any filter left NULL matches every job.
SELECT * FROM jobs
WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:owner_uid IS NULL OR owner_uid = :owner_uid) AND created_at >= :since
ORDER BY seq LIMIT :limit OFFSET :offset;

-- name: list_jobs_filtered_newest
SELECT * FROM jobs
WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:owner_uid IS NULL OR owner_uid = :owner_uid) AND created_at >= :since
ORDER BY seq DESC LIMIT :limit OFFSET :offset;

-- name: list_jobs_filtered_priority
SELECT * FROM jobs
WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:owner_uid IS NULL OR owner_uid = :owner_uid) AND created_at >= :since
ORDER BY priority DESC, run_at, seq LIMIT :limit OFFSET :offset;

-- name: list_jobs_filtered_run_at
SELECT * FROM jobs
WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:owner_uid IS NULL OR owner_uid = :owner_uid) AND created_at >= :since
ORDER BY run_at, seq LIMIT :limit OFFSET :offset;

-- name: count_jobs_filtered
SELECT COUNT(*) AS n FROM jobs
WHERE (:state IS NULL OR state = :state) AND (:queue IS NULL OR queue = :queue)
  AND (:owner_uid IS NULL OR owner_uid = :owner_uid) AND created_at >= :since;

-- name: count_by_state
SELECT state, SUM(n) AS n FROM job_counts GROUP BY state;

-- name: count_by_queue
SELECT queue, state, n FROM job_counts WHERE n <> 0;

-- name: count_by_state_of_owner
SELECT state, COUNT(*) AS n FROM jobs WHERE owner_uid = :owner_uid GROUP BY state;

-- name: count_by_queue_of_owner
SELECT queue, state, COUNT(*) AS n FROM jobs WHERE owner_uid = :owner_uid
GROUP BY queue, state;

-- name: clear_counts
DELETE FROM job_counts;

-- name: recount_jobs
-- Rebuild the per-queue counts from the rows (after a migration).
INSERT INTO job_counts (queue, state, n) SELECT queue, state, COUNT(*) FROM jobs
GROUP BY queue, state;

-- name: promote_due
-- Waiting and failed jobs whose time has come join their queue's ready jobs.
UPDATE jobs INDEXED BY jobs_timed SET state = 'pending', updated_at = :now
WHERE state IN ('waiting', 'failed') AND run_at <= :now;

-- name: queue_settings
SELECT * FROM queues;

-- name: ready_in_queue
-- The next ready jobs of one queue in claim order: a descent of jobs_ready.
SELECT seq, priority, run_at FROM jobs INDEXED BY jobs_ready
WHERE state = 'pending' AND queue = :queue
ORDER BY priority DESC, run_at, seq LIMIT :limit;

-- name: claim_from_queue
-- The common case, one queue with ready jobs: its next jobs straight off jobs_ready.
UPDATE jobs
SET state = 'processing', runs = runs + 1, updated_at = :now,
    lease_owner = :owner, lease_token = lower(hex(randomblob(8))),
    lease_expires_at = :now + COALESCE(timeout, :default_timeout) + :lease_margin
WHERE seq IN (
    SELECT seq FROM jobs INDEXED BY jobs_ready
    WHERE state = 'pending' AND queue = :queue
    ORDER BY priority DESC, run_at, seq LIMIT :limit
)
RETURNING *;

-- name: claim_seqs
-- One statement for the whole batch; each job gets its own random lease token.
UPDATE jobs
SET state = 'processing', runs = runs + 1, updated_at = :now,
    lease_owner = :owner, lease_token = lower(hex(randomblob(8))),
    lease_expires_at = :now + COALESCE(timeout, :default_timeout) + :lease_margin
WHERE seq IN (SELECT value FROM json_each(:seqs)) AND state = 'pending'
RETURNING *;

-- name: set_tokens
UPDATE queues SET tokens = :tokens, tokens_at = :now WHERE name = :name;

-- name: upsert_queue
-- A changed rate starts a full bucket; an unchanged one keeps its tokens.
INSERT INTO queues (name, concurrency, rate_count, rate_period, paused)
VALUES (:name, :concurrency, :rate_count, :rate_period, :paused)
ON CONFLICT (name) DO UPDATE SET
    concurrency = excluded.concurrency, rate_count = excluded.rate_count,
    rate_period = excluded.rate_period, paused = excluded.paused,
    tokens = CASE WHEN excluded.rate_count IS rate_count AND excluded.rate_period IS rate_period
                  THEN tokens END,
    tokens_at = CASE WHEN excluded.rate_count IS rate_count
                      AND excluded.rate_period IS rate_period THEN tokens_at END;

-- name: next_timed_at
SELECT run_at FROM jobs INDEXED BY jobs_timed
WHERE state IN ('waiting', 'failed') ORDER BY run_at LIMIT 1;

-- name: insert_attempt
INSERT INTO attempts (job_seq, attempt, lease_owner, started_at)
VALUES (:seq, :attempt, :owner, :now);

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
    exit_code = :exit_code, outcome = :outcome, error = :error, worker = :worker,
    cpu_seconds = :cpu_seconds, peak_bytes = :peak_bytes
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

-- name: cancel_jobs
UPDATE jobs
SET state = 'cancelled', updated_at = :now, last_error = :reason
WHERE id IN (SELECT value FROM json_each(:ids))
  AND state IN ('pending', 'waiting', 'blocked', 'failed')
RETURNING *;

-- name: retry_jobs
-- A finished job runs again from scratch; its attempts history is kept.
UPDATE jobs
SET state = 'pending', attempts = 0, interruptions = 0, run_at = :now, updated_at = :now,
    last_error = NULL
WHERE id IN (SELECT value FROM json_each(:ids))
  AND state IN (SELECT value FROM json_each(:states))
RETURNING *;

-- name: get_settings
SELECT key, value FROM settings;

-- name: set_setting
INSERT INTO settings (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: attempt_stats
SELECT outcome, COUNT(*) AS n, AVG(finished_at - started_at) AS mean_s,
       MAX(finished_at - started_at) AS max_s, TOTAL(cpu_seconds) AS cpu_s,
       MAX(peak_bytes) AS peak
FROM attempts WHERE finished_at IS NOT NULL GROUP BY outcome;

-- name: get_node
SELECT * FROM nodes WHERE name = :name;

-- name: register_node
-- A restart (or a new daemon taking the name) replaces the row: not stopped, not rescued.
INSERT INTO nodes (name, host, pid, started_at, heartbeat_at, slots, socket)
VALUES (:name, :host, :pid, :started_at, :heartbeat_at, :slots, :socket)
ON CONFLICT (name) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
    heartbeat_at = excluded.heartbeat_at, slots = excluded.slots, socket = excluded.socket,
    stopped_at = NULL, rescued_at = NULL;

-- name: heartbeat_node
UPDATE nodes SET heartbeat_at = :now, slots = :slots
WHERE name = :name AND started_at = :started_at AND rescued_at IS NULL;

-- name: stop_node
UPDATE nodes SET stopped_at = :now WHERE name = :name AND started_at = :started_at;

-- name: nodes
-- Each node with the processing jobs it holds (a descent of jobs_leased each).
SELECT n.*, (SELECT COUNT(*) FROM jobs j
             WHERE j.state = 'processing' AND j.lease_owner = n.name) AS running
FROM nodes n ORDER BY n.name;

-- name: take_dead_nodes
-- One statement: two daemons rescuing at once never both get a node.
UPDATE nodes SET rescued_at = :now
WHERE heartbeat_at < :stale_before AND stopped_at IS NULL AND rescued_at IS NULL
RETURNING *;
