-- Named queries of the PostgreSQL store. Each starts with "-- name: NAME"; the names,
-- :parameters and result columns are those of ../queries.sql (the shared SQLStore code
-- runs both). Lists arrive as one JSON array parameter. Parameters that may be NULL
-- carry a cast: the server must know their type.

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: set_meta
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: lock_schema
-- Serializes schema creation between daemons starting at once (held to commit).
SELECT pg_advisory_xact_lock(hashtext('queuectl schema ' || :schema::text));

-- name: schema_exists
SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = :schema AND tablename = 'meta')
    AS present;

-- name: next_job_number
-- Two hosts generating ids at once would both read the same number: the row (made with
-- the schema) stays locked to the end of the transaction.
SELECT value FROM meta WHERE key = 'next_job_number' FOR UPDATE;

-- name: job_exists
SELECT 1 FROM jobs WHERE id = :id;

-- name: insert_jobs
INSERT INTO jobs (id, command, cwd, owner_uid, idempotent, max_retries, timeout, state,
                  queue, priority, unique_key, env, backoff_base, backoff_max, jitter,
                  memory_max, cpus, max_procs, created_at, updated_at, run_at, n_parents)
VALUES (:id, :command, :cwd, :owner_uid, :idempotent, :max_retries, :timeout, :state,
        :queue, :priority, :unique_key, :env, :backoff_base, :backoff_max, :jitter,
        :memory_max, :cpus, :max_procs, :now, :now, :run_at, :n_parents);

-- name: insert_jobs_batch
-- insert_jobs for many rows in one statement: :rows is a JSON array of insert_jobs'
-- parameter sets, each with its position `pos` (seq follows it).
INSERT INTO jobs (id, command, cwd, owner_uid, idempotent, max_retries, timeout, state,
                  queue, priority, unique_key, env, backoff_base, backoff_max, jitter,
                  memory_max, cpus, max_procs, created_at, updated_at, run_at, n_parents)
SELECT r.id, r.command, r.cwd, r.owner_uid, r.idempotent, r.max_retries, r.timeout, r.state,
       r.queue, r.priority, r.unique_key, r.env, r.backoff_base, r.backoff_max, r.jitter,
       r.memory_max, r.cpus, r.max_procs, r.now, r.now, r.run_at, r.n_parents
FROM jsonb_to_recordset(:rows::jsonb) AS r(
    id text, command text, cwd text, owner_uid bigint, idempotent integer,
    max_retries bigint, timeout double precision, state text, queue text, priority bigint,
    unique_key text, env text, backoff_base double precision, backoff_max double precision,
    jitter double precision, memory_max bigint, cpus double precision, max_procs bigint,
    now double precision, run_at double precision, n_parents bigint, pos bigint)
ORDER BY r.pos;

-- name: insert_dependency
INSERT INTO job_deps (child_seq, parent_seq, pos, any_outcome)
SELECT c.seq, p.seq, :pos, :any_outcome FROM jobs c JOIN jobs p ON p.id = :parent
WHERE c.id = :child;

-- name: parents_of
SELECT c.id AS child, p.id, p.state, p.last_exit_code, d.any_outcome
FROM jobs c JOIN job_deps d ON d.child_seq = c.seq JOIN jobs p ON p.seq = d.parent_seq
WHERE c.id IN (SELECT jsonb_array_elements_text(:ids::jsonb))
ORDER BY c.seq, d.pos;

-- name: children_of
SELECT c.id FROM jobs p JOIN job_deps d ON d.parent_seq = p.seq JOIN jobs c ON c.seq = d.child_seq
WHERE p.id = :id ORDER BY c.seq;

-- name: blocked_children
SELECT DISTINCT c.id FROM jobs p JOIN job_deps d ON d.parent_seq = p.seq
JOIN jobs c ON c.seq = d.child_seq
WHERE p.id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) AND c.state = 'blocked';

-- name: unblock_jobs
UPDATE jobs
SET state = CASE WHEN run_at > :now THEN 'waiting' ELSE 'pending' END, updated_at = :now
WHERE id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) AND state = 'blocked'
RETURNING *;

-- name: block_jobs
UPDATE jobs SET state = 'blocked'
WHERE id IN (SELECT jsonb_array_elements_text(:ids::jsonb)) AND state = 'pending'
  AND n_parents > 0
RETURNING id;

-- name: purge_candidates
SELECT j.seq, j.id, j.updated_at FROM jobs j
WHERE j.state = :state AND j.state IN ('completed', 'cancelled', 'dead')
  AND j.updated_at < :before
  AND (j.updated_at, j.seq) > (:after_at::double precision, :after_seq::bigint)
  AND (:queue::text IS NULL OR j.queue = :queue::text)
  AND NOT EXISTS (
      SELECT 1 FROM job_deps d JOIN jobs c ON c.seq = d.child_seq
      WHERE d.parent_seq = j.seq AND c.state NOT IN ('completed', 'cancelled', 'dead'))
ORDER BY j.updated_at, j.seq LIMIT :limit;

-- name: delete_jobs
DELETE FROM jobs WHERE seq IN (SELECT jsonb_array_elements_text(:seqs::jsonb)::bigint);

-- name: schedules
-- Locked, in name order: two hosts looking at the due ticks at once take turns, and the
-- second reads the next_at the first moved on (a tick makes one job for the cluster).
SELECT * FROM schedules ORDER BY name FOR UPDATE;

-- name: get_schedule
SELECT * FROM schedules WHERE name = :name;

-- name: insert_schedule
INSERT INTO schedules (name, cron, tz, job, overlap, catch_up, paused, owner_uid, created_at,
                       next_at)
VALUES (:name, :cron, :tz, :job, :overlap, :catch_up, :paused, :owner_uid, :now, :next_at);

-- name: replace_schedule
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
SET next_at = :next_at, last_at = COALESCE(:last_at::double precision, last_at),
    last_job = COALESCE(:last_job::text, last_job)
WHERE name = :name;

-- name: next_schedule_at
SELECT MIN(next_at) AS at FROM schedules WHERE paused = 0;

-- name: unfinished_with_keys
SELECT * FROM jobs
WHERE unique_key IN (SELECT jsonb_array_elements_text(:keys::jsonb))
  AND state IN ('pending', 'waiting', 'blocked', 'processing', 'failed');

-- name: jobs_by_ids
SELECT * FROM jobs WHERE id IN (SELECT jsonb_array_elements_text(:ids::jsonb));

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
SELECT * FROM jobs
WHERE owner_uid = :owner_uid AND state = :state ORDER BY seq LIMIT :limit OFFSET :offset;

-- name: list_jobs_filtered_oldest
SELECT * FROM jobs
WHERE (:state::text IS NULL OR state = :state::text)
  AND (:queue::text IS NULL OR queue = :queue::text)
  AND (:owner_uid::bigint IS NULL OR owner_uid = :owner_uid::bigint)
  AND created_at >= :since::double precision
ORDER BY seq LIMIT :limit OFFSET :offset;

-- name: list_jobs_filtered_newest
SELECT * FROM jobs
WHERE (:state::text IS NULL OR state = :state::text)
  AND (:queue::text IS NULL OR queue = :queue::text)
  AND (:owner_uid::bigint IS NULL OR owner_uid = :owner_uid::bigint)
  AND created_at >= :since::double precision
ORDER BY seq DESC LIMIT :limit OFFSET :offset;

-- name: list_jobs_filtered_priority
SELECT * FROM jobs
WHERE (:state::text IS NULL OR state = :state::text)
  AND (:queue::text IS NULL OR queue = :queue::text)
  AND (:owner_uid::bigint IS NULL OR owner_uid = :owner_uid::bigint)
  AND created_at >= :since::double precision
ORDER BY priority DESC, run_at, seq LIMIT :limit OFFSET :offset;

-- name: list_jobs_filtered_run_at
SELECT * FROM jobs
WHERE (:state::text IS NULL OR state = :state::text)
  AND (:queue::text IS NULL OR queue = :queue::text)
  AND (:owner_uid::bigint IS NULL OR owner_uid = :owner_uid::bigint)
  AND created_at >= :since::double precision
ORDER BY run_at, seq LIMIT :limit OFFSET :offset;

-- name: count_jobs_filtered
SELECT COUNT(*) AS n FROM jobs
WHERE (:state::text IS NULL OR state = :state::text)
  AND (:queue::text IS NULL OR queue = :queue::text)
  AND (:owner_uid::bigint IS NULL OR owner_uid = :owner_uid::bigint)
  AND created_at >= :since::double precision;

-- name: count_by_queue
-- The sum of every statement's change (see job_count_deltas in schema.sql).
SELECT queue, state, SUM(n)::bigint AS n FROM job_count_deltas
GROUP BY queue, state HAVING SUM(n) <> 0;

-- name: count_by_queue_of_owner
SELECT queue, state, COUNT(*) AS n FROM jobs WHERE owner_uid = :owner_uid
GROUP BY queue, state;

-- name: count_deltas_over
-- Whether the delta rows are more than :limit (reads at most :limit + 1 of them).
SELECT COUNT(*) > :limit AS over FROM (SELECT 1 FROM job_count_deltas LIMIT :limit + 1) d;

-- name: try_fold_lock
SELECT pg_try_advisory_xact_lock(hashtext('queuectl fold ' || current_schema())) AS locked;

-- name: fold_counts
-- Replace the delta rows this statement sees by one row per (queue, state); rows other
-- transactions add meanwhile are not seen, so not deleted: they still count.
WITH d AS (DELETE FROM job_count_deltas RETURNING queue, state, n)
INSERT INTO job_count_deltas (queue, state, n)
SELECT queue, state, SUM(n) FROM d GROUP BY queue, state HAVING SUM(n) <> 0;

-- name: promote_due
UPDATE jobs SET state = 'pending', updated_at = :now
WHERE state IN ('waiting', 'failed') AND run_at <= :now;

-- name: queue_settings
-- The queues with a concurrency or rate limit are locked (in name order, so two hosts
-- cannot deadlock) and read in their latest version: a claim reads the counts and the
-- token bucket after this, so hosts claiming at once cannot together overshoot a limit
-- or spend one token twice. Queues without a limit are read without a lock.
WITH limited AS (
    SELECT * FROM queues WHERE concurrency IS NOT NULL OR rate_count IS NOT NULL
    ORDER BY name FOR UPDATE
)
SELECT * FROM limited
UNION ALL
SELECT * FROM queues WHERE concurrency IS NULL AND rate_count IS NULL;

-- name: ready_in_queue
-- The next ready jobs of one queue in claim order, unlocked: they only tell how many of
-- each queue a claim of several queues takes (claim_from_queue then takes them, SKIP
-- LOCKED).
SELECT seq, priority, run_at FROM jobs
WHERE state = 'pending' AND queue = :queue
ORDER BY priority DESC, run_at, seq LIMIT :limit;

-- name: claim_from_queue
-- Rows another host is claiming (locked) are passed over, not waited for.
UPDATE jobs
SET state = 'processing', runs = runs + 1, updated_at = :now,
    lease_owner = :owner,
    lease_token = substr(md5(random()::text || clock_timestamp()::text), 1, 16),
    lease_expires_at = :now + COALESCE(timeout, :default_timeout) + :lease_margin
WHERE seq IN (
    SELECT seq FROM jobs
    WHERE state = 'pending' AND queue = :queue
    ORDER BY priority DESC, run_at, seq LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: claim_seqs
-- (Unused by PostgresStore, which claims queue by queue; kept for the shared code.)
UPDATE jobs
SET state = 'processing', runs = runs + 1, updated_at = :now,
    lease_owner = :owner,
    lease_token = substr(md5(random()::text || clock_timestamp()::text), 1, 16),
    lease_expires_at = :now + COALESCE(timeout, :default_timeout) + :lease_margin
WHERE seq IN (
    SELECT seq FROM jobs
    WHERE seq IN (SELECT jsonb_array_elements_text(:seqs::jsonb)::bigint) AND state = 'pending'
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: set_tokens
UPDATE queues SET tokens = :tokens, tokens_at = :now WHERE name = :name;

-- name: upsert_queue
INSERT INTO queues (name, concurrency, rate_count, rate_period, paused)
VALUES (:name, :concurrency, :rate_count, :rate_period, :paused)
ON CONFLICT (name) DO UPDATE SET
    concurrency = excluded.concurrency, rate_count = excluded.rate_count,
    rate_period = excluded.rate_period, paused = excluded.paused,
    tokens = CASE WHEN excluded.rate_count IS NOT DISTINCT FROM queues.rate_count
                   AND excluded.rate_period IS NOT DISTINCT FROM queues.rate_period
                  THEN queues.tokens END,
    tokens_at = CASE WHEN excluded.rate_count IS NOT DISTINCT FROM queues.rate_count
                      AND excluded.rate_period IS NOT DISTINCT FROM queues.rate_period
                     THEN queues.tokens_at END;

-- name: next_timed_at
SELECT run_at FROM jobs WHERE state IN ('waiting', 'failed') ORDER BY run_at LIMIT 1;

-- name: insert_attempt
INSERT INTO attempts (job_seq, attempt, lease_owner, started_at)
VALUES (:seq, :attempt, :owner, :now);

-- name: leases_of
SELECT id, seq, state, lease_token, runs FROM jobs
WHERE id IN (SELECT jsonb_array_elements_text(:ids::jsonb));

-- name: finish_job
UPDATE jobs
SET state = :state, attempts = :attempts, interruptions = :interruptions, run_at = :run_at,
    updated_at = :now, last_exit_code = :exit_code, last_error = :error,
    lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
WHERE seq = :seq AND state = 'processing' AND lease_token = :token;

-- name: finish_attempt
UPDATE attempts
SET started_at = COALESCE(:started_at::double precision, started_at),
    finished_at = :finished_at, exit_code = :exit_code, outcome = :outcome, error = :error,
    worker = :worker, cpu_seconds = :cpu_seconds, peak_bytes = :peak_bytes
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
WHERE id IN (SELECT jsonb_array_elements_text(:ids::jsonb))
  AND state IN ('pending', 'waiting', 'blocked', 'failed')
RETURNING *;

-- name: retry_jobs
UPDATE jobs
SET state = 'pending', attempts = 0, interruptions = 0, run_at = :now, updated_at = :now,
    last_error = NULL
WHERE id IN (SELECT jsonb_array_elements_text(:ids::jsonb))
  AND state IN (SELECT jsonb_array_elements_text(:states::jsonb))
RETURNING *;

-- name: get_settings
SELECT key, value FROM settings;

-- name: set_setting
INSERT INTO settings (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: attempt_stats
SELECT outcome, COUNT(*) AS n, AVG(finished_at - started_at) AS mean_s,
       MAX(finished_at - started_at) AS max_s, COALESCE(SUM(cpu_seconds), 0.0) AS cpu_s,
       MAX(peak_bytes) AS peak
FROM attempts WHERE finished_at IS NOT NULL GROUP BY outcome;

-- name: get_node
SELECT * FROM nodes WHERE name = :name;

-- name: register_node
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
SELECT n.*, (SELECT COUNT(*) FROM jobs j
             WHERE j.state = 'processing' AND j.lease_owner = n.name) AS running
FROM nodes n ORDER BY n.name;

-- name: take_dead_nodes
-- Row locks make this safe with two daemons at once: the second waits for the first's
-- commit, then re-checks rescued_at IS NULL and skips the rows it took.
UPDATE nodes SET rescued_at = :now
WHERE heartbeat_at < :stale_before AND stopped_at IS NULL AND rescued_at IS NULL
RETURNING *;

-- name: dead_rows
-- Dead and live row versions of this schema's jobs table, as the statistics last saw.
SELECT COALESCE(n_dead_tup, 0) AS dead, COALESCE(n_live_tup, 0) AS live
FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = 'jobs';
