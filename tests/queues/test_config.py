"""Configuration from the environment: required settings, local defaults, validation, secrets."""
import dataclasses
import os
import re
from pathlib import Path

import pytest

from queues import serve
from queues.config import DEFAULT_PORT, LOCAL_API_KEY, ORDER, REQUIRED, Config, ConfigError, from_env
from scoring.rules import Rules

SECRET_API_KEY = "prod-api-key-7c1f9a"
SECRET_S3 = "s3-secret-0b7e44"
ACCESS_S3 = "AKIA-access-5d2e"
MONGO_PASSWORD = "mongo-pass-a93c"


@pytest.fixture
def env():
    """A complete production environment."""
    return {
        "MONGO_URL": "mongodb://judge:%s@127.0.0.1:27017/numerai" % MONGO_PASSWORD,
        "MONGO_DB_NAME": "numerai",
        "S3_UPLOAD_BUCKET": "uploads-bucket",
        "S3_DATASET_BUCKET": "datasets-bucket",
        "S3_ACCESS_KEY": ACCESS_S3,
        "S3_SECRET_KEY": SECRET_S3,
        "API_KEY": SECRET_API_KEY,
    }


def named(message, name):
    return re.search(r"(?<![A-Z0-9_])%s(?![A-Z0-9_])" % re.escape(name), message) is not None


# -- production -----------------------------------------------------------------
def test_production_reads_every_setting(env):
    env.update(S3_ENDPOINT_URL="http://127.0.0.1:9000", CACHE_DIR="/var/cache/criteria")
    config = from_env(env)
    assert config.api_key == SECRET_API_KEY
    assert config.mongo_url == env["MONGO_URL"]
    assert config.mongo_db_name == "numerai"
    assert config.upload_bucket == "uploads-bucket"
    assert config.dataset_bucket == "datasets-bucket"
    assert config.s3_access_key == ACCESS_S3
    assert config.s3_secret_key == SECRET_S3
    assert config.s3_endpoint_url == "http://127.0.0.1:9000"
    assert config.cache_dir == "/var/cache/criteria"
    assert config.local is False
    assert config.host == "0.0.0.0"
    assert config.port == DEFAULT_PORT
    assert config.rules == Rules()


def test_production_cache_dir_defaults_under_home(env):
    assert from_env(env).cache_dir == os.path.join(os.path.expanduser("~"), ".cache", "submission-criteria")


def test_production_names_every_missing_variable():
    with pytest.raises(ConfigError) as raised:
        from_env({})
    message = str(raised.value)
    for name in REQUIRED:
        assert named(message, name), (name, message)
    assert "env.sh.example" in message


@pytest.mark.parametrize("name", REQUIRED)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_production_names_exactly_the_missing_variable(env, name, how):
    if how == "unset":
        del env[name]
    else:
        env[name] = ""
    with pytest.raises(ConfigError) as raised:
        from_env(env)
    message = str(raised.value)
    assert named(message, name)
    assert [other for other in REQUIRED if other != name and named(message, other)] == []
    assert "env.sh.example" in message
    for secret in (SECRET_API_KEY, SECRET_S3, ACCESS_S3, MONGO_PASSWORD):
        assert secret not in message


def test_no_default_api_key_outside_local_mode(env):
    del env["API_KEY"]
    with pytest.raises(ConfigError) as raised:
        from_env(env)
    assert named(str(raised.value), "API_KEY")
    with pytest.raises(TypeError):
        Config()  # the key has no default at all
    # and the development key is never used in production
    env["API_KEY"] = SECRET_API_KEY
    assert from_env(env).api_key != LOCAL_API_KEY


def test_an_explicit_environ_replaces_the_process_environment(env, monkeypatch):
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("API_KEY", "from-the-process")
    assert from_env(env).port == DEFAULT_PORT
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = from_env()
    assert config.port == 1234 and config.api_key == SECRET_API_KEY


# -- local mode -------------------------------------------------------------------
def test_local_mode_needs_nothing(tmp_path):
    config = from_env({}, use_local=True, local_dir=str(tmp_path))
    assert config.local is True
    assert config.api_key == LOCAL_API_KEY
    assert config.mongo_url == ""
    assert config.host == "127.0.0.1"
    assert config.port == DEFAULT_PORT
    assert config.local_dir == str(tmp_path)
    assert config.cache_dir == os.path.join(str(tmp_path), "cache")


def test_local_mode_honours_api_key_and_mongo_url(tmp_path):
    config = from_env({"API_KEY": "my-dev-key", "MONGO_URL": "mongodb://127.0.0.1:27999"},
                      use_local=True, local_dir=str(tmp_path))
    assert config.api_key == "my-dev-key"
    assert config.mongo_url == "mongodb://127.0.0.1:27999"


def test_local_mode_empty_api_key_falls_back_to_the_development_key(tmp_path):
    assert from_env({"API_KEY": ""}, use_local=True, local_dir=str(tmp_path)).api_key == LOCAL_API_KEY


def test_server_name_is_read_for_provenance(env, tmp_path):
    assert from_env(env).server_name == ""  # hostname:pid is filled in by queues.provenance
    env["SERVER_NAME"] = "judge-eu-1"
    assert from_env(env).server_name == "judge-eu-1"
    assert from_env({"SERVER_NAME": "laptop"}, use_local=True, local_dir=str(tmp_path)).server_name == "laptop"


def test_host_can_be_set(env):
    env["HOST"] = "127.0.0.1"
    assert from_env(env).host == "127.0.0.1"


# -- numbers --------------------------------------------------------------------------
INTEGERS = ("PORT", "HTTP_THREADS", "ORIGINALITY_THREADS", "MONGO_TIMEOUT_MS", "WEB_CONCURRENCY", "ROUND_MEMORY_MB")
FLOATS = ("STOP_TIMEOUT", "RECOVERY_INTERVAL", "LEASE_SECONDS", "LATE_FILE_SECONDS", "ROUND_IDLE_SECONDS")
FIELD = {"PORT": "port", "HTTP_THREADS": "http_threads", "ORIGINALITY_THREADS": "originality_threads",
         "MONGO_TIMEOUT_MS": "mongo_timeout_ms", "STOP_TIMEOUT": "stop_timeout", "RECOVERY_INTERVAL": "recovery_interval",
         "WEB_CONCURRENCY": "workers", "LEASE_SECONDS": "lease_seconds", "LATE_FILE_SECONDS": "late_file_seconds",
         "ROUND_IDLE_SECONDS": "round_idle_seconds", "ROUND_MEMORY_MB": "round_memory_mb"}


@pytest.mark.parametrize("name", INTEGERS + FLOATS)
@pytest.mark.parametrize("value", ["abc", "0", "-3", "12abc", "0x10"])
@pytest.mark.parametrize("use_local", [False, True])
def test_bad_numbers_are_rejected_naming_the_variable(env, tmp_path, name, value, use_local):
    env[name] = value
    with pytest.raises(ConfigError) as raised:
        from_env(env, use_local=use_local, local_dir=str(tmp_path))
    message = str(raised.value)
    assert named(message, name)
    assert SECRET_API_KEY not in message and SECRET_S3 not in message


@pytest.mark.parametrize("name", INTEGERS)
def test_integers_reject_fractions(env, name):
    env[name] = "1.5"
    with pytest.raises(ConfigError, match=name):
        from_env(env)


@pytest.mark.parametrize("name, value, expected", [
    ("PORT", "8080", 8080), ("HTTP_THREADS", "4", 4), ("ORIGINALITY_THREADS", "3", 3),
    ("MONGO_TIMEOUT_MS", "250", 250), ("STOP_TIMEOUT", "2.5", 2.5), ("RECOVERY_INTERVAL", "7", 7.0),
    ("WEB_CONCURRENCY", "3", 3), ("LEASE_SECONDS", "12.5", 12.5), ("LATE_FILE_SECONDS", "45", 45.0),
    ("ROUND_IDLE_SECONDS", "600", 600.0), ("ROUND_MEMORY_MB", "256", 256),
])
def test_good_numbers_are_read(env, name, value, expected):
    env[name] = value
    config = from_env(env)
    assert getattr(config, FIELD[name]) == expected
    assert type(getattr(config, FIELD[name])) is type(expected)


@pytest.mark.parametrize("value", ["0.5", "0.999"])
def test_a_lease_too_short_to_extend_is_refused(env, value):
    env["LEASE_SECONDS"] = value
    with pytest.raises(ConfigError, match="LEASE_SECONDS"):
        from_env(env)


def test_gunicorn_runs_as_many_worker_processes_as_configured(env):
    env["WEB_CONCURRENCY"] = "3"
    assert serve.options(from_env(env))["workers"] == 3
    assert serve.options(from_env({**env, "WEB_CONCURRENCY": ""}))["workers"] == 1




@pytest.mark.parametrize("name", INTEGERS + FLOATS)
def test_empty_numbers_take_the_default(env, name):
    env[name] = ""
    default = {f.name: f.default for f in dataclasses.fields(Config)}[FIELD[name]]
    assert getattr(from_env(env), FIELD[name]) == default


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_durations_are_rejected(env, name, value):
    env[name] = value
    with pytest.raises(ConfigError, match=name):
        from_env(env)


def test_port_out_of_range_is_rejected(env):
    env["PORT"] = "70000"
    with pytest.raises(ConfigError, match="PORT"):
        from_env(env)


# -- rules ------------------------------------------------------------------------------
@pytest.mark.parametrize("use_local", [False, True])
def test_rule_overrides_flow_into_config(env, tmp_path, use_local):
    env.update(RULE_CONCORDANCE_THRESHOLD="0.2", RULE_MAX_SIMILAR="3", RULE_CONCORDANCE_SEED="7")
    rules = from_env(env, use_local=use_local, local_dir=str(tmp_path)).rules
    assert rules == dataclasses.replace(Rules(), concordance_threshold=0.2, max_similar=3, concordance_seed=7)


def test_bad_rule_is_a_config_error_naming_it(env):
    env["RULE_MAX_SIMILAR"] = "lots"
    with pytest.raises(ConfigError) as raised:
        from_env(env)
    assert named(str(raised.value), "RULE_MAX_SIMILAR")
    assert SECRET_API_KEY not in str(raised.value)


# -- secrets ------------------------------------------------------------------------------
def test_repr_hides_the_api_key_and_s3_credentials(env):
    config = from_env(env)
    for text in (repr(config), str(config)):
        assert SECRET_API_KEY not in text
        assert SECRET_S3 not in text
        assert ACCESS_S3 not in text
        assert "uploads-bucket" in text  # the rest is shown


def test_repr_hides_the_local_api_key(tmp_path):
    assert LOCAL_API_KEY not in repr(from_env({}, use_local=True, local_dir=str(tmp_path)))


def test_repr_hides_the_mongo_password(env):
    assert MONGO_PASSWORD not in repr(from_env(env))


@pytest.mark.parametrize("name, value", [
    ("MONGO_URL", "<YOUR_MONGO_URL>"),
    ("MONGO_URL", "mongo.example:27017"),
    ("MONGO_URL", "judge:%s@db.internal" % MONGO_PASSWORD),
    ("S3_ENDPOINT_URL", "minio.example:9000"),
])
def test_urls_without_their_scheme_are_rejected_naming_the_variable(env, name, value):
    """pymongo takes '<YOUR_MONGO_URL>' for a host name, and botocore refuses a bare endpoint with a traceback."""
    env[name] = value
    with pytest.raises(ConfigError) as raised:
        from_env(env)
    assert named(str(raised.value), name)
    assert value not in str(raised.value) and MONGO_PASSWORD not in str(raised.value)
    if name == "MONGO_URL":
        with pytest.raises(ConfigError):
            from_env({"MONGO_URL": value}, use_local=True)


@pytest.mark.parametrize("value", ["mongodb://127.0.0.1:27017", "mongodb+srv://judge:pw@cluster0.example.net/x"])
def test_mongodb_urls_are_accepted(env, value):
    env["MONGO_URL"] = value
    assert from_env(env).mongo_url == value


# -- every problem at once ------------------------------------------------------------------
def example_order():
    """The variables env.sh.example lists (set or commented out), in its order; RULE_* examples aside."""
    text = (Path(__file__).resolve().parents[2] / "env.sh.example").read_text()
    names = re.findall(r"^#?\s*export\s+([A-Z0-9_]+)=", text, flags=re.MULTILINE)
    return tuple(name for name in names if not name.startswith("RULE_"))


def test_the_reporting_order_is_env_sh_examples():
    assert ORDER == example_order()


def test_every_problem_is_reported_at_once_in_the_order_of_env_sh_example(env):
    """``./server check`` named one problem at a time: fix, run, fix, run."""
    wrong = {"RULE_CORELATION_LIMIT": "0.9", "LOG_LEVEL": "loud", "ROUND_MEMORY_MB": "lots", "STOP_TIMEOUT": "-1",
             "HTTP_THREADS": "0", "S3_ENDPOINT_URL": "minio:9000", "PORT": "99999", "API_KEY": "",
             "MONGO_URL": "db.internal:27017", "RULE_CORRELATION_LIMIT": "7"}
    env.update(wrong)
    del env["S3_SECRET_KEY"]
    with pytest.raises(ConfigError) as raised:
        from_env(env)
    problems = raised.value.problems
    named_in_turn = [next(name for name in list(ORDER) + sorted(wrong) if named(problem, name)) for problem in problems]
    assert named_in_turn == ["MONGO_URL", "S3_SECRET_KEY", "API_KEY", "PORT", "S3_ENDPOINT_URL", "HTTP_THREADS",
                             "STOP_TIMEOUT", "ROUND_MEMORY_MB", "LOG_LEVEL", "RULE_CORELATION_LIMIT",
                             "RULE_CORRELATION_LIMIT"], problems
    assert str(raised.value) == "; ".join(problems)
    assert "did you mean RULE_CORRELATION_LIMIT" in problems[-2] and "from 0 to 1" in problems[-1]
    for secret in (SECRET_S3, ACCESS_S3, MONGO_PASSWORD):
        assert secret not in str(raised.value)


def test_a_wrong_log_level_is_a_configuration_problem(env, tmp_path):
    env["LOG_LEVEL"] = "verbose"
    with pytest.raises(ConfigError, match="LOG_LEVEL='verbose' is not one of DEBUG, INFO, WARNING, ERROR"):
        from_env(env)
    assert from_env({**env, "LOG_LEVEL": "debug"}).port == DEFAULT_PORT
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        from_env({"LOG_LEVEL": "x"}, use_local=True, local_dir=str(tmp_path))


@pytest.mark.parametrize("use_local", [False, True])
def test_rule_problems_are_configuration_problems(env, tmp_path, use_local):
    env.update(RULE_CORRELATION_LIMIT="7", RULE_MAX_SIMILARS="2")
    with pytest.raises(ConfigError) as raised:
        from_env(env, use_local=use_local, local_dir=str(tmp_path))
    assert len(raised.value.problems) == 2
    assert "RULE_CORRELATION_LIMIT='7' must be a number from 0 to 1" in raised.value.problems[0]
    assert "did you mean RULE_MAX_SIMILAR" in raised.value.problems[1]
