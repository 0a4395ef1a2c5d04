"""The systemd units, the shipped configuration file and the installer (issue 5).

``systemd-analyze`` (Debian's ``systemd`` package; ``make test`` installs it when it is
missing and it can) checks the units offline: no systemd needs to run as PID 1. A
machine without it fails these tests with a message saying so rather than skipping
them, so that a green run always means the units were verified.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from queuectl.client import SYSTEM_SOCKET
from queuectld.config import RESTART_KEYS, DaemonConfig

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
SYSTEM_UNITS = ["queuectld.service", "queuectld.socket"]
USER_UNIT = "user/queuectld.service"
SHIPPED_CONFIG = ROOT / "etc" / "queuectl" / "queuectld.toml"
HTTP_UNIT = "queuectl-http.service"
HTTP_CONFIG = ROOT / "etc" / "queuectl" / "http.toml"
INSTALLED_BIN = "/usr/local/bin/queuectld"
INSTALLED_CLI = "/usr/local/bin/queuectl"
# The gateway's unit is rated by the same tool (docs/http.md states the score).
MAX_HTTP_EXPOSURE = 1.5
# The exposure `systemd-analyze security` gives queuectld.service (docs/operations.md);
# a change to the unit that makes it worse fails here.
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not installed, so the unit files cannot be verified: "
            "install Debian's systemd package (`make test-deps` does, as root), then rerun"
        )
    return path


def staged_units(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this checkout's queuectld.

    `systemd-analyze verify` insists that the ExecStart program exists; the installed
    path (/usr/local/bin/queuectld) only does after packaging/install.sh.
    """
    here = str(Path(sys.executable).with_name("queuectld"))
    assert os.access(here, os.X_OK), f"{here} missing: run `make install` first"
    cli = str(Path(sys.executable).with_name("queuectl"))
    out = tmp_path / "units"
    (out / "user").mkdir(parents=True)
    for name in [*SYSTEM_UNITS, USER_UNIT, HTTP_UNIT]:
        text = (UNITS / name).read_text().replace(INSTALLED_BIN, here)
        (out / name).write_text(text.replace(f"{INSTALLED_CLI} ", f"{cli} "))
    return out


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_system_units_verify(tmp_path: Path) -> None:
    tool = systemd_analyze()
    units = staged_units(tmp_path)
    result = run([tool, "verify", *(str(units / n) for n in SYSTEM_UNITS)])
    # verify exits 0 on mere warnings (an unknown key, a bad value): any output fails.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("dropin", ["no-network.conf", "strict-filesystem.conf"])
def test_documented_dropins_verify(tmp_path: Path, dropin: str) -> None:
    tool = systemd_analyze()
    units = staged_units(tmp_path)
    (units / "queuectld.service.d").mkdir()
    shutil.copy(UNITS / "dropins" / dropin, units / "queuectld.service.d" / dropin)
    result = run([tool, "verify", str(units / "queuectld.service")])
    assert result.returncode == 0 and not (result.stderr + result.stdout).strip(), (
        result.stdout + result.stderr
    )
    result = run([tool, "security", "--offline=yes", str(units / "queuectld.service")])
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match and float(match.group(1)) < 1.6


def test_user_unit_verifies(tmp_path: Path) -> None:
    tool = systemd_analyze()
    units = staged_units(tmp_path)
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    result = run(
        [tool, "--user", "verify", str(units / USER_UNIT)], env={"XDG_RUNTIME_DIR": str(runtime)}
    )
    assert result.returncode == 0 and not (result.stderr + result.stdout).strip(), (
        result.stdout + result.stderr
    )


def test_security_exposure(tmp_path: Path) -> None:
    tool = systemd_analyze()
    units = staged_units(tmp_path)
    result = run([tool, "security", "--offline=yes", str(units / "queuectld.service")])
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout
    score = float(match.group(1))
    print(f"\nsystemd-analyze security queuectld.service: {score} {match.group(2)}")
    assert score <= MAX_EXPOSURE
    doc = (ROOT / "docs" / "operations.md").read_text()
    assert f"{score:.1f}" in doc, "docs/operations.md states another exposure score"


def _exposure(tool: str, unit_path: Path) -> float:
    result = run([tool, "security", "--offline=yes", str(unit_path)])
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def test_http_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    tool = systemd_analyze()
    units = staged_units(tmp_path)
    result = run([tool, "verify", str(units / HTTP_UNIT)])
    assert result.returncode == 0 and not (result.stderr + result.stdout).strip(), (
        result.stdout + result.stderr
    )
    score = _exposure(tool, units / HTTP_UNIT)
    print(f"\nsystemd-analyze security {HTTP_UNIT}: {score}")
    assert score <= MAX_HTTP_EXPOSURE
    assert f"rates this unit {score:.1f}" in (UNITS / HTTP_UNIT).read_text()
    assert f"{score:.1f}" in (ROOT / "docs" / "http.md").read_text()
    # With the token drop-in (a non-loopback bind) it still verifies and stays hardened.
    dropins = units / f"{HTTP_UNIT}.d"
    dropins.mkdir()
    shutil.copy(UNITS / "dropins" / "http-token.conf", dropins / "token.conf")
    result = run([tool, "verify", str(units / HTTP_UNIT)])
    assert result.returncode == 0 and not (result.stderr + result.stdout).strip(), (
        result.stdout + result.stderr
    )
    assert _exposure(tool, units / HTTP_UNIT) <= MAX_HTTP_EXPOSURE


def test_http_unit_settings() -> None:
    parsed = unit(HTTP_UNIT)
    service = parsed["Service"]
    assert "queuectld.service" in parsed["Unit"]["After"]
    assert parsed["Unit"]["Wants"] == "queuectld.socket"
    assert service["User"] == "queuectl-http" and service["SupplementaryGroups"] == "queuectl"
    assert service["ExecStart"] == (
        f"{INSTALLED_CLI} --socket {SYSTEM_SOCKET} --no-autostart http "
        "--config /etc/queuectl/http.toml"
    )
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["IPAddressDeny"] == "any" and service["IPAddressAllow"] == "localhost"
    assert service["RestartPreventExitStatus"] == "2"
    dropin = configparser.RawConfigParser(strict=False, delimiters=("=",))
    dropin.optionxform = str  # type: ignore[assignment,method-assign]
    dropin.read(UNITS / "dropins" / "http-token.conf")
    assert dropin["Service"]["Environment"] == "QUEUECTL_HTTP_TOKEN_FILE=%d/token"


def test_shipped_http_config_loads() -> None:
    from queuectl.http import settings

    loaded = settings.load(config=str(HTTP_CONFIG), env={})
    assert (loaded.host, loaded.port, loaded.token) == ("127.0.0.1", 8080, None)


def test_service_unit_settings() -> None:
    service = unit("queuectld.service")["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["KillMode"] == "mixed"
    assert "kill -HUP $MAINPID" in service["ExecReload"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == service["Group"] == "queuectl"
    for key in ("Runtime", "State", "Logs", "Configuration"):
        assert service[f"{key}Directory"] == "queuectl"
    defaults = DaemonConfig()
    stop = float(service["TimeoutStopSec"])
    assert stop > defaults.drain_timeout + defaults.kill_grace + 15
    assert service["ExecStart"] == f"{INSTALLED_BIN} --config /etc/queuectl/queuectld.toml"
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert "AF_UNIX" in service["RestrictAddressFamilies"]
    socket_unit = unit("queuectld.socket")["Socket"]
    assert socket_unit["ListenStream"] == SYSTEM_SOCKET
    assert socket_unit["SocketMode"] == "0660"
    assert socket_unit["SocketGroup"] == "queuectl"
    user = unit(USER_UNIT)["Service"]
    assert user["Type"] == "notify" and "%h/.queuectl" in user["ExecStart"]


def test_shipped_config_lists_every_key_with_its_default() -> None:
    text = SHIPPED_CONFIG.read_text()
    defaults = DaemonConfig()
    blocks = text.split("\n\n")
    for f in dataclasses.fields(DaemonConfig):
        (block,) = [b for b in blocks if re.search(rf"^# {f.name} = ", b, re.MULTILINE)]
        line = re.search(rf"^# ({f.name} = .*)$", block, re.MULTILINE)
        assert line
        shown = tomllib.loads(line.group(1))[f.name]
        assert shown == getattr(defaults, f.name), f"{f.name}: the file shows {shown!r}"
        why = [ln for ln in block.splitlines() if ln.startswith("# ") and " = " not in ln]
        assert why, f"{f.name}: no line says why"
        assert ("[restart]" in block) == (f.name in RESTART_KEYS), f"{f.name}: [restart] mark"
    values = tomllib.loads(text)
    assert values["socket"] == SYSTEM_SOCKET
    assert set(values) <= {f.name for f in dataclasses.fields(DaemonConfig)}


def test_shipped_config_passes_check_config(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUECTL", "QUEUECTLD_"))}
    # The `queuectl` group exists once installed; here, check everything else.
    env["QUEUECTLD_ALLOWED_GROUPS"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", "queuectld", "--check-config", "--config", str(SHIPPED_CONFIG)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    env.pop("QUEUECTLD_ALLOWED_GROUPS")
    result = subprocess.run(
        [sys.executable, "-m", "queuectld", "--check-config", "--config", str(SHIPPED_CONFIG)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    try:
        import grp

        grp.getgrnam("queuectl")
        assert result.returncode == 0, result.stderr
    except KeyError:
        assert result.returncode == 2
        assert f"{SHIPPED_CONFIG}:" in result.stderr and "no group 'queuectl'" in result.stderr


def test_installer_stages_units_config_and_docs(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    script = ROOT / "packaging" / "install.sh"
    result = run(["sh", str(script), "--units-only"], env={"DESTDIR": str(dest)})
    assert result.returncode == 0, result.stdout + result.stderr
    unit_dir = dest / "usr/local/lib/systemd"
    for name in [*SYSTEM_UNITS, HTTP_UNIT]:
        assert (unit_dir / "system" / name).read_text() == (UNITS / name).read_text()
    assert (unit_dir / "user/queuectld.service").exists()
    assert (dest / "etc/queuectl/http.toml").read_text() == HTTP_CONFIG.read_text()
    assert (dest / "usr/local/share/doc/queuectl/http.md").exists()
    assert (dest / "usr/local/share/doc/queuectl/http-token.conf").exists()
    conf = dest / "etc/queuectl/queuectld.toml"
    assert conf.read_text() == SHIPPED_CONFIG.read_text()
    assert (dest / "usr/local/share/doc/queuectl/operations.md").exists()
    assert (dest / "etc/logrotate.d/queuectld").exists()
    # An upgrade keeps the administrator's file and puts the new one beside it.
    conf.write_text(conf.read_text() + "\n# edited\n")
    result = run(["sh", str(script), "--units-only"], env={"DESTDIR": str(dest)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert conf.read_text().endswith("# edited\n")
    assert (dest / "etc/queuectl/queuectld.toml.dist").read_text() == SHIPPED_CONFIG.read_text()
    result = run(["sh", str(script), "--uninstall"], env={"DESTDIR": str(dest)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (unit_dir / "system/queuectld.service").exists()
    assert not (unit_dir / f"system/{HTTP_UNIT}").exists()
    assert conf.exists()  # configuration and data stay without --purge


@pytest.mark.slow
def test_installer_builds_a_working_release(tmp_path: Path) -> None:
    """The full install into a staging root: a virtual environment from PyPI (network)."""
    dest = tmp_path / "root"
    result = run(["sh", str(ROOT / "packaging" / "install.sh")], env={"DESTDIR": str(dest)})
    assert result.returncode == 0, result.stdout + result.stderr
    current = dest / "opt/queuectl/current"
    assert current.is_symlink()
    version = run([str(dest / "opt/queuectl/current/bin/queuectld"), "--version"])
    assert version.returncode == 0 and version.stdout.startswith("queuectld ")
    link = dest / "usr/local/bin/queuectld"
    assert os.readlink(link) == "/opt/queuectl/current/bin/queuectld"
