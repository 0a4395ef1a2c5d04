"""Daemon configuration (file < environment < flags) and the run-time queue settings."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from queuectl.errors import InvalidRequest
from queuectld.config import (
    QUEUE_SETTINGS,
    DaemonConfig,
    load_config,
    queue_settings,
    setting_for,
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "queuectld.toml"
    path.write_text(text)
    return str(path)


def flags(**values: Any) -> dict[str, Any]:
    # main.py passes every flag, None when not given.
    base: dict[str, Any] = {
        k: None
        for k in (
            "home",
            "socket",
            "database",
            "log_dir",
            "log_file",
            "log_level",
            "log_format",
            "workers",
        )
    }
    base.update(values)
    return base


def test_defaults_derive_paths_from_home(home: Path) -> None:
    cfg = load_config(None, {}, flags(home=str(home)))
    assert cfg.home == str(home)
    assert cfg.socket == str(home / "queuectld.sock")
    assert cfg.database == str(home / "queue.db")
    assert cfg.log_dir == str(home / "logs")
    assert cfg.log_file == ""
    assert cfg.workers == 0
    assert cfg.drain_timeout == DaemonConfig.drain_timeout
    assert cfg.node_id  # the host name when not configured


def test_queuectl_home_and_socket_from_the_environment(tmp_path: Path) -> None:
    env = {"QUEUECTL_HOME": str(tmp_path / "h"), "QUEUECTL_SOCKET": str(tmp_path / "s.sock")}
    cfg = load_config(None, env, flags())
    assert cfg.home == str(tmp_path / "h")
    assert cfg.socket == str(tmp_path / "s.sock")
    assert cfg.database == str(tmp_path / "h" / "queue.db")


def test_precedence_flags_over_environment_over_file(tmp_path: Path, home: Path) -> None:
    path = write_toml(tmp_path, 'workers = 1\nlog_level = "debug"\nkill_grace = 2.5\n')
    env = {"QUEUECTLD_WORKERS": "2", "QUEUECTLD_LOG_LEVEL": "warning"}
    cfg = load_config(path, env, flags(home=str(home), workers=3))
    assert cfg.workers == 3  # flag
    assert cfg.log_level == "warning"  # environment over file
    assert cfg.kill_grace == 2.5  # file over default
    assert load_config(path, env, flags(home=str(home))).workers == 2
    assert load_config(path, {}, flags(home=str(home))).workers == 1
    assert load_config(None, {}, flags(home=str(home))).workers == 0


def test_config_file_from_the_environment(tmp_path: Path, home: Path) -> None:
    path = write_toml(tmp_path, "drain_timeout = 7\n")
    cfg = load_config(None, {"QUEUECTLD_CONFIG": path}, flags(home=str(home)))
    assert cfg.drain_timeout == 7.0


def test_file_paths_are_expanded_and_explicit_paths_win(tmp_path: Path, home: Path) -> None:
    path = write_toml(tmp_path, f'database = "{tmp_path}/other.db"\nsocket = "~/q.sock"\n')
    cfg = load_config(path, {}, flags(home=str(home)))
    assert cfg.database == str(tmp_path / "other.db")
    assert cfg.socket == str(Path("~/q.sock").expanduser())
    assert cfg.log_dir == str(home / "logs")


def test_allowed_uids_from_file_and_environment(tmp_path: Path, home: Path) -> None:
    path = write_toml(tmp_path, "allowed_uids = [1000, 1001]\n")
    assert load_config(path, {}, flags(home=str(home))).allowed_uids == [1000, 1001]
    env = {"QUEUECTLD_ALLOWED_UIDS": "5, 6 7"}
    assert load_config(None, env, flags(home=str(home))).allowed_uids == [5, 6, 7]


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("wrokers = 2\n", "wrokers"),  # unknown key
        ('workers = "two"\n', "workers"),  # wrong types
        ("workers = true\n", "workers"),
        ("kill_grace = [1]\n", "kill_grace"),
        ('allowed_uids = ["root"]\n', "allowed_uids"),
        ("workers = -1\n", "workers"),  # values that cannot work
        ("drain_timeout = -1\n", "drain_timeout"),
        ('log_level = "loud"\n', "log_level"),
        ('log_format = "xml"\n', "log_format"),
        ('socket_mode = "0666"\n', "socket_mode"),
        ('socket_mode = "rw"\n', "socket_mode"),
        ("log_max_bytes = 10\n", "log_max_bytes"),
        ("max_connections = 0\n", "max_connections"),
        ("workers = \n", "queuectld.toml"),  # not TOML: the file is named
    ],
)
def test_bad_config_file(tmp_path: Path, home: Path, toml: str, key: str) -> None:
    path = write_toml(tmp_path, toml)
    with pytest.raises(InvalidRequest) as info:
        load_config(path, {}, flags(home=str(home)))
    assert key in info.value.message


def test_bad_environment_value_names_its_key(home: Path) -> None:
    with pytest.raises(InvalidRequest) as info:
        load_config(None, {"QUEUECTLD_WORKERS": "many"}, flags(home=str(home)))
    assert "workers" in info.value.message.lower()


def test_unknown_environment_key_is_refused_like_an_unknown_file_key(home: Path) -> None:
    env = {"QUEUECTLD_WORKER": "4", "QUEUECTLD_LOG_LEVEL": "debug"}
    with pytest.raises(InvalidRequest) as info:
        load_config(None, env, flags(home=str(home)))
    message = info.value.message
    assert "QUEUECTLD_WORKER" in message and "unknown key 'worker'" in message
    assert "did you mean 'workers'" in message
    # QUEUECTLD_CONFIG names the file, not a key: still accepted.
    assert load_config(None, {"QUEUECTLD_CONFIG": ""}, flags(home=str(home))).workers >= 0


def test_missing_config_file(tmp_path: Path, home: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"nope\.toml"):
        load_config(str(tmp_path / "nope.toml"), {}, flags(home=str(home)))


def test_socket_path_too_long_for_af_unix(tmp_path: Path) -> None:
    long_home = tmp_path / ("d" * 120)
    with pytest.raises(InvalidRequest, match="longer than"):
        load_config(None, {}, flags(home=str(long_home)))


# -- queue settings (`queuectl config`) --------------------------------------------


def test_queue_setting_defaults_match_the_seed() -> None:
    defaults = {key: s.default for key, s in QUEUE_SETTINGS.items()}
    assert defaults["max-retries"] == 3
    assert defaults["backoff-base"] == 2.0
    assert defaults["default-timeout"] == 10.0
    assert queue_settings({}) == defaults


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("max-retries", "0", 0),
        ("max-retries", "1000", 1000),
        ("backoff-base", "1", 1.0),
        ("backoff-base", "2.5", 2.5),
        ("backoff-max", "0", 0.0),
        ("default-timeout", "0.5", 0.5),
        ("max-interruptions", "0", 0),
    ],
)
def test_queue_setting_accepted(key: str, raw: str, value: float) -> None:
    assert QUEUE_SETTINGS[key].check(raw) == value


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("max-retries", "-1", "between 0 and 1000"),
        ("max-retries", "1001", "between 0 and 1000"),
        ("max-retries", "1.5", "must be an integer"),
        ("max-retries", "three", "must be an integer"),
        ("backoff-base", "0.5", "between 1 and 60"),
        ("backoff-base", "nan", "finite"),
        ("backoff-base", "inf", "finite"),
        ("backoff-base", "two", "must be a number"),
        ("default-timeout", "0", "between"),
    ],
)
def test_queue_setting_refused(key: str, raw: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        QUEUE_SETTINGS[key].check(raw)
    assert message in info.value.message
    assert key in info.value.message


def test_setting_names_and_stored_values() -> None:
    assert setting_for("max_retries").key == "max-retries"
    assert setting_for("backoff-base").key == "backoff-base"
    with pytest.raises(InvalidRequest, match="unknown setting 'retries'"):
        setting_for("retries")
    stored = {"max-retries": "5", "backoff-base": "garbage", "workers": "3"}
    effective = queue_settings(stored)
    assert effective["max-retries"] == 5
    assert effective["backoff-base"] == 2.0  # a bad stored value falls back to the default
    assert "workers" not in effective
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in effective.values())


# -- the store: [store] url / schema ----------------------------------------------------

PG = "postgresql://queue:s3cret@db.example:5432/jobs"


def test_store_table_in_the_file(tmp_path: Path, home: Path) -> None:
    path = write_toml(tmp_path, f'home = "{home}"\n[store]\nurl = "{PG}"\nschema = "q_1"\n')
    config = load_config(path, {}, flags())
    assert (config.store_url, config.store_schema) == (PG, "q_1")
    assert config.uses_postgres
    # Two daemons with their own homes may share the database: the lock is per home.
    assert config.lock_path() == str(home / "queuectld.lock")
    assert config.store_name() == "postgresql://queue:***@db.example:5432/jobs (schema q_1)"
    assert "s3cret" not in config.store_key() and config.node_id in config.store_key()


def test_store_defaults_to_the_sqlite_file(home: Path) -> None:
    config = load_config(None, {"QUEUECTL_HOME": str(home)}, flags())
    assert (config.store_url, config.store_schema) == ("", "queuectl")
    assert not config.uses_postgres
    assert config.lock_path() == str(home / "queue.db") + ".lock"
    assert config.store_key() == config.store_name() == str(home / "queue.db")


def test_store_from_environment_and_flags(tmp_path: Path, home: Path) -> None:
    path = write_toml(tmp_path, '[store]\nurl = "postgresql://file/db"\n')
    env = {
        "QUEUECTL_HOME": str(home),
        "QUEUECTLD_STORE_URL": "postgres://env/db",
        "QUEUECTLD_STORE_SCHEMA": "from_env",
    }
    config = load_config(path, env, flags())
    assert (config.store_url, config.store_schema) == ("postgres://env/db", "from_env")
    config = load_config(path, env, flags(store_url="postgresql://flag/db", store_schema="f"))
    assert (config.store_url, config.store_schema) == ("postgresql://flag/db", "f")


def test_a_sqlite_store_url_is_the_database(tmp_path: Path, home: Path) -> None:
    env = {"QUEUECTL_HOME": str(home), "QUEUECTLD_STORE_URL": f"sqlite://{tmp_path}/q.db"}
    config = load_config(None, env, flags())
    assert config.database == f"{tmp_path}/q.db" and not config.uses_postgres
    env["QUEUECTLD_DATABASE"] = f"{tmp_path}/other.db"
    with pytest.raises(InvalidRequest, match="set only one of them"):
        load_config(None, env, flags())


@pytest.mark.parametrize(
    "url", ["mysql://u:hidden@h/db", "queue.db", "sqlite://relative.db", "http://x"]
)
def test_store_url_of_no_known_kind_is_one_sentence(tmp_path: Path, url: str) -> None:
    path = write_toml(tmp_path, f'[store]\nurl = "{url}"\n')
    with pytest.raises(InvalidRequest) as caught:
        load_config(path, {"QUEUECTL_HOME": str(tmp_path)}, flags())
    message = caught.value.message
    assert message.startswith(f"{path}:1: store_url must be a postgresql:// URL"), message
    assert message.count(". ") == 0 and "hidden" not in message


@pytest.mark.parametrize("schema", ["Queue", "1abc", "a-b", "pg_queue", "", "x" * 64, 'a"b'])
def test_store_schema_must_be_a_plain_identifier(home: Path, schema: str) -> None:
    env = {"QUEUECTL_HOME": str(home), "QUEUECTLD_STORE_SCHEMA": schema}
    with pytest.raises(InvalidRequest, match="store_schema must be a plain lower-case"):
        load_config(None, env, flags())


@pytest.mark.parametrize("schema", ["queuectl", "q_1", "_x", "x" * 63])
def test_store_schema_accepted(home: Path, schema: str) -> None:
    env = {"QUEUECTL_HOME": str(home), "QUEUECTLD_STORE_SCHEMA": schema}
    assert load_config(None, env, flags()).store_schema == schema


def test_printed_configuration_hides_the_password(tmp_path: Path, home: Path) -> None:
    from queuectld.config import explain_config, render_toml

    env = {"QUEUECTL_HOME": str(home), "QUEUECTLD_STORE_URL": PG}
    text = render_toml(explain_config(None, env, flags()))
    assert "s3cret" not in text
    assert 'store_url = "postgresql://queue:***@db.example:5432/jobs"' in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (PG, "postgresql://queue:***@db.example:5432/jobs"),
        ("postgresql://queue@db/jobs", "postgresql://queue@db/jobs"),
        ("postgresql://:pw@db/jobs?sslmode=require", "postgresql://:***@db/jobs?sslmode=require"),
        ("postgresql:///jobs", "postgresql:///jobs"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    from queuectld.config import redact_url

    assert redact_url(url) == shown
