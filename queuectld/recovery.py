"""Give back the jobs a stopped or vanished daemon held.

At start (and at the end of a drain) a daemon returns the jobs its own node still
holds; while it runs, the safety tick takes back jobs whose lease expired under
another owner. Either way the job's attempt is recorded as interrupted by
:meth:`~queuectld.recorder.Recorder.interrupted` and the job runs again
(at-least-once), unless it must not run twice.
"""

from __future__ import annotations

import time

import structlog

from queuectl.errors import QueuectlError
from queuectld import procs
from queuectld.committer import Committer
from queuectld.recorder import Recorder

log = structlog.get_logger("queuectld.recovery")


async def recover(committer: Committer, recorder: Recorder, owner: str, queue_tag: str) -> int:
    """Return the jobs ``owner`` held when it last stopped (or crashed) to the queue."""
    now = time.time()
    held = await committer.call(lambda s: s.leased_jobs(owner, None))
    expired = await committer.call(lambda s: s.leased_jobs(None, now))
    if held:
        # A daemon killed together with its executors (OOM, SIGKILL to the whole unit)
        # can leave jobs running: stop them before they are handed out again.
        ids = {claim.job.id for claim in held}
        for group in procs.find_job_groups(queue_tag, ids):
            log.warning("orphaned_job_killed", pgid=group)
            procs.signal_group(group, procs.SIGKILL)
    seen: set[str] = set()
    for claim in [*held, *expired]:
        if claim.job.id in seen:
            continue
        seen.add(claim.job.id)
        await recorder.store_one(recorder.interrupted(claim, "queuectld stopped while the job ran"))
    if seen:
        log.warning("jobs_recovered", count=len(seen))
    return len(seen)


async def rescue_expired_leases(committer: Committer, recorder: Recorder, owner: str) -> None:
    """Return jobs whose lease expired under another owner (a daemon that vanished).

    Our own leases are not touched here: the hung-executor check ends their executors.
    """
    try:
        expired = await committer.call(lambda s: s.leased_jobs(None, time.time()))
    except QueuectlError as exc:
        log.error("lease_rescue_failed", error=str(exc))
        return
    for claim in expired:
        if claim.job.lease_owner == owner:
            continue
        reason = f"the lease of {claim.job.lease_owner} expired"
        log.warning("lease_expired", job_id=claim.job.id, owner=claim.job.lease_owner)
        await recorder.store_one(recorder.interrupted(claim, reason))


# A claim older than this that the dispatcher does not know of was lost: its commit
# went through while the daemon saw the store fail (a connection cut during COMMIT).
LOST_CLAIM_AGE_S = 30.0


async def rescue_lost_claims(
    committer: Committer, recorder: Recorder, owner: str, known: set[str]
) -> None:
    """Return our own leased jobs that no part of this daemon holds to the queue."""
    before = time.time() - LOST_CLAIM_AGE_S
    try:
        held = await committer.call(lambda s: s.leased_jobs(owner, None))
    except QueuectlError:
        return
    for claim in held:
        if claim.job.id in known or claim.job.updated_at > before:
            continue
        log.warning("lost_claim_returned", job_id=claim.job.id)
        reason = "claimed while the store connection failed; never started"
        await recorder.store_one(recorder.interrupted(claim, reason))
