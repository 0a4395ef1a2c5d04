"""Access control and a queue shared by several users (issue 4, items 7 and 8).

These tests need root (to create users and run a root daemon), as CI has. Clients
run as other users in a forked child that drops its privileges after the interpreter
is loaded: the uid the daemon sees is the kernel's, exactly as with runuser.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from queuectl import Client
from queuectl.errors import PermissionDenied, QueuectlError, Unavailable
from tests.pg import PG_URL, pg_schema

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: CI runs as root")

USERS = ("qctest_alice", "qctest_bob")
GROUP = "qctest_users"
ADMIN = "qctest_carol"  # a plain user made an administrator through admin_groups
ADMIN_GROUP = "qctest_admins"


def _ensure_users() -> dict[str, pwd.struct_passwd]:
    for group in (GROUP, ADMIN_GROUP):
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", "--system", group], check=True)
    out = {}
    for name in (*USERS, ADMIN):
        groups = GROUP if name in USERS else f"{GROUP},{ADMIN_GROUP}"
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "-G", groups, name], check=True
            )
        out[name] = pwd.getpwnam(name)
    return out


def as_user(uid: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child with the user's uid, gid and groups; return its result."""
    pw = pwd.getpwuid(uid)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        code = 0
        try:
            os.setgroups(os.getgrouplist(pw.pw_name, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(uid)
            try:
                result: Any = {"ok": fn()}
            except QueuectlError as exc:
                result = {"error": exc.code, "message": exc.message}
            os.write(write_fd, json.dumps(result, default=str).encode())
        except BaseException as exc:  # report anything, never return into pytest
            os.write(write_fd, json.dumps({"crash": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def _start(
    env: dict[str, str], args: list[str], umask: int | None = None
) -> subprocess.Popen[bytes]:
    read_fd, write_fd = os.pipe()

    def pre() -> None:
        if umask is not None:
            os.umask(umask)

    proc = subprocess.Popen(
        [sys.executable, "-m", "queuectld", *args, "--ready-fd", str(write_fd)],
        env=env,
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=pre,
    )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        line = ready.read()
    if b"READY" not in line:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"queuectld did not start: {err.decode()[-2000:]}")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> bytes:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


@pytest.fixture
def shared_queue(daemon_backend: str) -> Iterator[dict[str, Any]]:
    """A root daemon serving two unprivileged users through a 0660 group socket, on each
    store (jobs are scoped to their owner by the store's queries)."""
    with contextlib.ExitStack() as stack:
        store: dict[str, str] = {}
        if daemon_backend == "postgres":
            schema = stack.enter_context(pg_schema())
            store = {"QUEUECTLD_STORE_URL": PG_URL, "QUEUECTLD_STORE_SCHEMA": schema}
        yield from _shared_queue(store)


def _shared_queue(store: dict[str, str]) -> Iterator[dict[str, Any]]:
    users = _ensure_users()
    base = Path(tempfile.mkdtemp(prefix="qc-mu-", dir="/tmp"))
    os.chmod(base, 0o755)
    run_dir = base / "run"
    run_dir.mkdir(mode=0o755)
    os.chmod(run_dir, 0o755)
    out_dir = base / "out"
    out_dir.mkdir()
    os.chmod(out_dir, 0o1777)
    sock = str(run_dir / "q.sock")
    uids = ",".join(str(u.pw_uid) for u in users.values())
    env = {
        **os.environ,
        "QUEUECTLD_SOCKET_MODE": "0660",
        "QUEUECTLD_SOCKET_GROUP": GROUP,
        "QUEUECTLD_ALLOWED_UIDS": uids,
        "QUEUECTLD_ADMIN_GROUPS": ADMIN_GROUP,
        "QUEUECTL_NO_AUTOSTART": "1",
        **store,
    }
    proc = _start(env, ["--home", str(base / "state"), "--socket", sock, "--workers", "2"])
    try:
        yield {"sock": sock, "users": users, "out": out_dir, "proc": proc, "base": base}
    finally:
        log = _stop(proc)
        (base / "daemon.log").write_bytes(log)


def _wait_done(sock: str, ids: list[str], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with Client.connect(sock, autostart=False) as c:
        while True:
            jobs = {i: c.get_job(i) for i in ids}
            if all(j["state"] in ("completed", "dead") for j in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs not finished: {jobs}")
            time.sleep(0.05)


def test_each_job_runs_as_the_user_who_submitted_it(shared_queue: dict[str, Any]) -> None:
    sock, out = shared_queue["sock"], shared_queue["out"]
    alice, bob = (shared_queue["users"][n] for n in USERS)

    def submit(job_id: str) -> Callable[[], Any]:
        def fn() -> Any:
            os.chdir(out)
            with Client.connect(sock, autostart=False) as c:
                # The client cannot claim another identity: there is no field for it.
                job = c.enqueue(
                    f"id -u > {job_id}.uid; id -G > {job_id}.groups", id=job_id, cwd=str(out)
                )
                return job["owner_uid"]

        return fn

    assert as_user(alice.pw_uid, submit("a1")) == {"ok": alice.pw_uid}
    assert as_user(bob.pw_uid, submit("b1")) == {"ok": bob.pw_uid}
    jobs = _wait_done(sock, ["a1", "b1"])
    assert {j["state"] for j in jobs.values()} == {"completed"}
    assert (out / "a1.uid").read_text().strip() == str(alice.pw_uid)
    assert (out / "b1.uid").read_text().strip() == str(bob.pw_uid)
    # The user's supplementary groups come along (GROUP is one of them), root's do not.
    assert str(grp.getgrnam(GROUP).gr_gid) in (out / "a1.groups").read_text().split()
    assert (out / "a1.uid").stat().st_uid == alice.pw_uid


def test_users_see_and_control_only_their_own_jobs(shared_queue: dict[str, Any]) -> None:
    sock = shared_queue["sock"]
    alice, bob = (shared_queue["users"][n] for n in USERS)
    with Client.connect(sock, autostart=False) as root:
        root.stop_workers()  # keep the jobs pending while we look

    def enqueue(job_id: str) -> Callable[[], Any]:
        def fn() -> Any:
            with Client.connect(sock, autostart=False) as c:
                return c.enqueue("true", id=job_id)["id"]

        return fn

    assert as_user(alice.pw_uid, enqueue("alice-1")) == {"ok": "alice-1"}
    assert as_user(bob.pw_uid, enqueue("bob-1")) == {"ok": "bob-1"}

    def listing() -> Any:
        with Client.connect(sock, autostart=False) as c:
            jobs, total = c.list_jobs()
            return {"ids": [j["id"] for j in jobs], "total": total, "status": c.status()}

    seen = as_user(alice.pw_uid, listing)["ok"]
    assert seen["ids"] == ["alice-1"]
    assert seen["total"] == 1
    assert seen["status"]["counts"]["pending"] == 1

    def peek_other() -> Any:
        with Client.connect(sock, autostart=False) as c:
            return c.get_job("alice-1")

    refused = as_user(bob.pw_uid, peek_other)
    assert refused["error"] == PermissionDenied.code
    assert "another user" in refused["message"]

    def control() -> Any:
        with Client.connect(sock, autostart=False) as c:
            return c.set_workers(4)

    denied = as_user(bob.pw_uid, control)
    assert denied["error"] == PermissionDenied.code
    with Client.connect(sock, autostart=False) as root:
        assert root.status()["workers"]["desired"] == 0  # unchanged by the refused request
        everyone, _ = root.list_jobs()
        assert {j["id"] for j in everyone} == {"alice-1", "bob-1"}
        root.shutdown()
    shared_queue["proc"].wait(timeout=30)
    log = shared_queue["proc"].stderr.read().decode()
    # Every control action is logged with the caller's uid.
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    enqueued = {e["job_id"]: e["uid"] for e in events if e.get("event") == "job_enqueued"}
    assert enqueued == {"alice-1": alice.pw_uid, "bob-1": bob.pw_uid}
    assert any(e.get("event") == "workers_set" and e.get("uid") == 0 for e in events)


def test_admin_groups_members_see_and_control_every_job(shared_queue: dict[str, Any]) -> None:
    sock = shared_queue["sock"]
    alice, bob, carol = (shared_queue["users"][n] for n in (*USERS, ADMIN))
    with Client.connect(sock, autostart=False) as root:
        root.stop_workers()  # keep the jobs pending while we look

    def enqueue() -> Any:
        with Client.connect(sock, autostart=False) as c:
            return c.enqueue("true", id="alice-2")["id"]

    assert as_user(alice.pw_uid, enqueue) == {"ok": "alice-2"}

    def administer() -> Any:
        with Client.connect(sock, autostart=False) as c:
            jobs, _ = c.list_jobs()
            return {
                "ids": [j["id"] for j in jobs],
                "owner": c.get_job("alice-2")["owner_uid"],
                "workers": c.set_workers(1)["desired"],
            }

    # carol is in admin_groups (by a supplementary group): every job, and the workers.
    assert as_user(carol.pw_uid, administer) == {
        "ok": {"ids": ["alice-2"], "owner": alice.pw_uid, "workers": 1}
    }
    # bob, allowed on the socket but in no admin group, is still refused both.
    denied = as_user(bob.pw_uid, administer)
    assert denied["error"] == PermissionDenied.code
    _wait_done(sock, ["alice-2"])


def test_a_fork_bomb_under_max_procs_ends_and_leaves_nothing(shared_queue: dict[str, Any]) -> None:
    """A user's job: --max-procs by RLIMIT_NPROC here (no pids controller), then the
    attempt's end (its timeout) takes every process of the bomb with it."""
    sock, out = shared_queue["sock"], shared_queue["out"]
    alice = shared_queue["users"][USERS[0]]

    def bomb() -> Any:
        with Client.connect(sock, autostart=False) as c:
            # Each shell forks two more until fork fails (EAGAIN at 24 processes); the
            # job's shell then exits (or times out) with the bomb's leftovers running.
            job = c.enqueue(
                "f() { f | f & }; f; sleep 1", id="bomb", max_procs=24, timeout=5, cwd=str(out)
            )
            return job["max_procs"]

    assert as_user(alice.pw_uid, bomb) == {"ok": 24}
    _wait_done(sock, ["bomb"], timeout=60)
    log = (shared_queue["base"] / "state" / "logs" / "job_bomb.txt").read_text()
    assert "max-procs 24 (" in log
    assert "fork" in log.lower()  # the shells were refused forks ("Cannot fork")

    def processes_of(uid: int) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{entry}").st_uid == uid:
                        found.append(int(entry))
        return found

    # Nothing of the bomb is left (a cgroup per attempt; else its process group).
    deadline = time.monotonic() + 10
    while processes_of(alice.pw_uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(alice.pw_uid) == []


@pytest.fixture
def private_daemon() -> Iterator[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix="qc-acl-", dir="/tmp"))
    os.chmod(base, 0o755)  # others may reach the socket file; its own mode must stop them
    env = {**os.environ, "QUEUECTL_NO_AUTOSTART": "1"}
    proc = _start(env, ["--home", str(base)], umask=0)
    try:
        yield {"base": base, "sock": str(base / "queuectld.sock"), "env": env, "proc": proc}
    finally:
        _stop(proc)


def test_socket_is_private_even_under_umask_000(private_daemon: dict[str, Any]) -> None:
    mode = stat.S_IMODE(os.stat(private_daemon["sock"]).st_mode)
    assert mode == 0o600
    nobody = pwd.getpwnam("nobody").pw_uid

    def status() -> Any:
        try:
            with Client.connect(private_daemon["sock"], autostart=False) as c:
                return c.status()
        except Unavailable as exc:
            return {"refused": exc.message}

    answer = as_user(nobody, status)
    assert "permission denied" in answer["ok"]["refused"]


def test_peer_credentials_refuse_a_user_the_file_mode_lets_in(
    private_daemon: dict[str, Any],
) -> None:
    # Open the file mode wide, as a careless admin might: the SO_PEERCRED check still holds.
    os.chmod(private_daemon["sock"], 0o666)
    nobody = pwd.getpwnam("nobody").pw_uid

    def status() -> Any:
        with Client.connect(private_daemon["sock"], autostart=False) as c:
            return c.status()

    answer = as_user(nobody, status)
    assert answer["error"] == PermissionDenied.code
    assert "may not use this queuectld" in answer["message"]


def test_no_network_listener(private_daemon: dict[str, Any]) -> None:
    pid = private_daemon["proc"].pid
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{table}") as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
        assert not [r for r in rows if r[9] in inodes], f"daemon has a {table} socket"


def test_second_daemon_refuses_the_same_socket_and_store(private_daemon: dict[str, Any]) -> None:
    base = private_daemon["base"]
    env = private_daemon["env"]
    same_socket = subprocess.run(
        [sys.executable, "-m", "queuectld", "--home", str(base)],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert same_socket.returncode == 1
    assert b"another queuectld" in same_socket.stderr
    other_socket = subprocess.run(
        [sys.executable, "-m", "queuectld", "--home", str(base), "--socket", str(base / "b.sock")],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert other_socket.returncode == 1
    assert b"is using" in other_socket.stderr
    # The first daemon still answers.
    with Client.connect(private_daemon["sock"], autostart=False) as c:
        assert c.ping()["pong"] is True


def test_stale_socket_file_is_replaced() -> None:
    base = Path(tempfile.mkdtemp(prefix="qc-stale-", dir="/tmp"))
    path = base / "queuectld.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a kill -9 leaves behind
    env = {**os.environ, "QUEUECTL_NO_AUTOSTART": "1"}
    proc = _start(env, ["--home", str(base)])
    try:
        with Client.connect(str(path), autostart=False) as c:
            assert c.ping()["pong"] is True
    finally:
        _stop(proc)


def test_world_writable_socket_directory_is_refused() -> None:
    base = Path(tempfile.mkdtemp(prefix="qc-ww-", dir="/tmp"))
    os.chmod(base, 0o777)
    env = {**os.environ, "QUEUECTL_NO_AUTOSTART": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "queuectld",
            "--home",
            str(base / "state"),
            "--socket",
            str(base / "q.sock"),
        ],
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert b"writable by others" in result.stderr
