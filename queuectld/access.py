"""Who may do what: the daemon's owner and admins see everything, users their own jobs.

Identity comes only from the socket's peer credentials (SO_PEERCRED), never from
anything a client says. For a per-user daemon every allowed caller is its owner (or
root), so this only matters for a system queue shared by several users.
"""

from __future__ import annotations

import grp
import os

import structlog

from queuectl.errors import NotFound, PermissionDenied
from queuectld.jobs import Job
from queuectld.server import Peer

log = structlog.get_logger("queuectld.access")


class AccessPolicy:
    """Decides, per request, whose jobs a caller sees and whether it may run the queue."""

    def __init__(self, admin_groups: list[str]) -> None:
        self.admin_uids = {0, os.getuid()}
        self.admin_gids: set[int] = set()
        for name in admin_groups:
            try:
                self.admin_gids.add(int(name) if name.isdigit() else grp.getgrnam(name).gr_gid)
            except KeyError:
                log.warning("unknown_admin_group", group=name)

    def is_admin(self, peer: Peer | None) -> bool:
        if peer is None or peer.uid in self.admin_uids:
            return True
        return bool(self.admin_gids and peer.groups() & self.admin_gids)

    def scope(self, peer: Peer | None) -> int | None:
        """The owner uid to filter by, or ``None`` when the caller sees every job."""
        return None if self.is_admin(peer) else peer.uid if peer else None

    def check_job(self, peer: Peer | None, job: Job | None, job_id: str) -> Job:
        """The job, if it exists and the caller may see it."""
        if job is None:
            raise NotFound(f"no job with id {job_id!r}")
        owner = self.scope(peer)
        if owner is not None and job.owner_uid != owner:
            raise PermissionDenied(f"job {job_id!r} belongs to another user")
        return job

    def require_admin(self, peer: Peer | None, action: str) -> None:
        if not self.is_admin(peer):
            uid = peer.uid if peer else "?"
            raise PermissionDenied(
                f"uid {uid} may not {action}; ask an administrator of this queue"
            )
