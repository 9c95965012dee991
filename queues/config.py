"""Configuration from the environment, checked before anything starts."""
import base64
import binascii
import dataclasses
import math
import os
import urllib.parse

from scoring.rules import Rules, RuleSettingsError

#: The development key from the 2017 README; accepted in local mode only.
LOCAL_API_KEY = "h/52y/E7cm8Ih4F3cVdlBM4ZQxER+Apk6P0L7yR0lFU="
DEFAULT_PORT = 5151
REQUIRED = ("MONGO_URL", "MONGO_DB_NAME", "S3_UPLOAD_BUCKET", "S3_DATASET_BUCKET",
            "S3_ACCESS_KEY", "S3_SECRET_KEY", "API_KEY")


#: Every variable the server reads, in the order env.sh.example lists them: problems are reported in
#: this order, so the list an operator works through matches the file they edit (RULE_* come last).
ORDER = REQUIRED + ("PORT", "HOST", "S3_ENDPOINT_URL", "CACHE_DIR", "ORIGINALITY_THREADS", "HTTP_THREADS",
                    "MONGO_TIMEOUT_MS", "STOP_TIMEOUT", "RECOVERY_INTERVAL", "RECONCILE_INTERVAL", "LEASE_SECONDS",
                    "WEB_CONCURRENCY", "LATE_FILE_SECONDS", "ROUND_IDLE_SECONDS", "ROUND_MEMORY_MB", "SERVER_NAME",
                    "LOG_LEVEL", "NOTIFY_URL", "NOTIFY_SECRET", "NOTIFY_TIMEOUT", "NOTIFY_MAX_AGE")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: What a webhook secret is (Standard Webhooks): this prefix, then base64 of 24 to 64 random bytes.
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)
#: NOTIFY_MAX_AGE's default: delivery keeps trying for 3 days.
NOTIFY_MAX_AGE = 3 * 24 * 3600.0
SECRET_FORM = ("whsec_ followed by the base64 of %d to %d random bytes, e.g. the output of: python3 -c "
               "\"import base64, os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\"" % SECRET_BYTES)


class ConfigError(Exception):
    """The environment does not describe a server that can run.

    ``problems`` lists every one found, one sentence each, in the order of
    env.sh.example, so an operator fixes them all in one pass.
    """

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class Problems:
    """Collects ``(variable, message)`` while the environment is read, to raise them all at once."""

    def __init__(self):
        self.found = []

    def add(self, variable, message):
        self.found.append((variable, message))

    def raise_any(self):
        """ConfigError with every problem, in ORDER (unknown names, i.e. RULE_*, last, by name)."""
        if self.found:
            rank = {name: number for number, name in enumerate(ORDER)}
            ordered = sorted(self.found, key=lambda found: (rank.get(found[0], len(ORDER)), found[0]))
            raise ConfigError([message for _, message in ordered])


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the server needs to know, from one place."""

    api_key: str = dataclasses.field(repr=False)
    mongo_url: str = dataclasses.field(default="", repr=False)  # may hold a password
    mongo_db_name: str = "numerai"
    upload_bucket: str = ""
    dataset_bucket: str = ""
    s3_access_key: str = dataclasses.field(default="", repr=False)
    s3_secret_key: str = dataclasses.field(default="", repr=False)
    s3_endpoint_url: str = ""
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    local: bool = False
    local_dir: str = "local"
    cache_dir: str = ""
    originality_threads: int = 2
    http_threads: int = 16
    workers: int = 1  # gunicorn worker processes, each a whole server sharing the database
    mongo_timeout_ms: int = 3000
    stop_timeout: float = 15.0
    recovery_interval: float = 10.0
    reconcile_interval: float = 300.0
    lease_seconds: float = 30.0
    server_name: str = ""  # recorded with every verdict; empty: hostname:pid
    late_file_seconds: float = 300.0  # how long another user's missing file may still arrive
    round_idle_seconds: float = 3600.0  # a round unused this long leaves memory
    round_memory_mb: int = 1024  # memory for loaded rounds; least recently used ones beyond it leave
    notify_url: str = dataclasses.field(default="", repr=False)  # may hold a token in its query; empty: no webhooks
    notify_secret: str = dataclasses.field(default="", repr=False)
    notify_timeout: float = 10.0  # seconds one delivery may take
    notify_max_age: float = NOTIFY_MAX_AGE  # how long delivery keeps trying
    rules: Rules = Rules()


def _number(environ, problems, name, default, kind=int, most=math.inf):
    """An optional positive, finite number; its default (and a problem naming it) when it is not one."""
    value = environ.get(name, "")
    if not value:
        return default
    try:
        parsed = kind(value)
    except ValueError:
        parsed = -1
    if not (0 < parsed <= most and math.isfinite(parsed)):
        limit = "" if most == math.inf else " up to %s" % most
        problems.add(name, "%s=%r must be a positive %s%s" % (name, value, "whole number" if kind is int else "number", limit))
        return default
    return parsed


def _url(environ, problems, name, schemes, example):
    """An optional URL; a problem naming it when its scheme is not one of ``schemes``.

    The value is not echoed: a MongoDB URL may hold a password.
    """
    value = environ.get(name, "")
    if value and not value.startswith(schemes):
        problems.add(name, "%s must start with %s (e.g. %s)" % (name, " or ".join(schemes), example))
    return value


def production(environ, problems):
    """Production settings; every variable in REQUIRED must be set and non-empty."""
    for name in REQUIRED:
        if not environ.get(name):
            problems.add(name, "%s is required and %s (see env.sh.example)" % (name, "empty" if name in environ else "not set"))
    _url(environ, problems, "MONGO_URL", ("mongodb://", "mongodb+srv://"), "mongodb://user:password@db.internal:27017")
    _url(environ, problems, "S3_ENDPOINT_URL", ("http://", "https://"), "http://127.0.0.1:9000")
    return dict(
        api_key=environ.get("API_KEY", ""),
        mongo_url=environ.get("MONGO_URL", ""),
        mongo_db_name=environ.get("MONGO_DB_NAME", ""),
        upload_bucket=environ.get("S3_UPLOAD_BUCKET", ""),
        dataset_bucket=environ.get("S3_DATASET_BUCKET", ""),
        s3_access_key=environ.get("S3_ACCESS_KEY", ""),
        s3_secret_key=environ.get("S3_SECRET_KEY", ""),
        s3_endpoint_url=environ.get("S3_ENDPOINT_URL", ""),
        cache_dir=environ.get("CACHE_DIR", "") or os.path.join(os.path.expanduser("~"), ".cache", "submission-criteria"),
    )


def local(environ, problems, local_dir):
    """Local settings: only MONGO_URL and API_KEY are read, both optional."""
    return dict(
        api_key=environ.get("API_KEY") or LOCAL_API_KEY,
        mongo_url=_url(environ, problems, "MONGO_URL", ("mongodb://", "mongodb+srv://"), "mongodb://127.0.0.1:27017"),
        mongo_db_name=environ.get("MONGO_DB_NAME", "numerai-dev"),
        upload_bucket="uploads",
        dataset_bucket="datasets",
        local_dir=local_dir,
        cache_dir=os.path.join(local_dir, "cache"),
    )


def notify_settings(environ, problems):
    """The webhook settings (NOTIFY_*); neither the URL nor the secret is ever echoed.

    The URL must be one a POST can go to: http or https with a host, and
    no user or password (the signature, not the URL, says who sends). The
    secret is required with the URL and must be what Standard Webhooks'
    libraries accept, so the backend can verify with them.
    """
    url = environ.get("NOTIFY_URL", "")
    secret = environ.get("NOTIFY_SECRET", "")
    if url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.add("NOTIFY_URL", "NOTIFY_URL must be an http:// or https:// URL with a host "
                                       "(e.g. https://backend.internal/hooks/criteria)")
        elif parts.username is not None or parts.password is not None:
            problems.add("NOTIFY_URL", "NOTIFY_URL must not hold a user or password: the receiver verifies "
                                       "the signature made with NOTIFY_SECRET instead")
        else:
            try:
                parts.port
            except ValueError:
                problems.add("NOTIFY_URL", "NOTIFY_URL has a port that is not a number from 1 to 65535")
        if not secret:
            problems.add("NOTIFY_SECRET", "NOTIFY_SECRET is required when NOTIFY_URL is set: %s" % SECRET_FORM)
    if secret and secret_key(secret) is None:
        problems.add("NOTIFY_SECRET", "NOTIFY_SECRET is not a webhook secret: %s" % SECRET_FORM)
    return dict(notify_url=url, notify_secret=secret,
                notify_timeout=_number(environ, problems, "NOTIFY_TIMEOUT", 10.0, float, most=300),
                notify_max_age=_number(environ, problems, "NOTIFY_MAX_AGE", NOTIFY_MAX_AGE, float))


def secret_key(secret):
    """The HMAC key a ``whsec_`` secret holds, or None when it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        return None
    text = secret[len(SECRET_PREFIX):]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1] else None


def read_log_level(environ, problems):
    """LOG_LEVEL is applied by ``server`` before the configuration is read; checked here so that
    ``./server check`` lists a wrong one with every other problem."""
    level = environ.get("LOG_LEVEL", "")
    if level and level.upper() not in LOG_LEVELS:
        problems.add("LOG_LEVEL", "LOG_LEVEL=%r is not one of %s" % (level, ", ".join(LOG_LEVELS)))


def from_env(environ=None, use_local=False, local_dir="local"):
    """Build a :class:`Config`, raising ConfigError that lists every problem, each actionable."""
    environ = os.environ if environ is None else environ
    problems = Problems()
    values = local(environ, problems, local_dir) if use_local else production(environ, problems)
    try:
        rules = Rules.from_env(environ)
    except RuleSettingsError as exc:
        rules = Rules()
        for variable, message in exc.problems:
            problems.add(variable, message)
    config = Config(
        local=use_local,
        port=_number(environ, problems, "PORT", DEFAULT_PORT, most=65535),
        host=environ.get("HOST", "127.0.0.1" if use_local else "0.0.0.0"),
        originality_threads=_number(environ, problems, "ORIGINALITY_THREADS", 2),
        http_threads=_number(environ, problems, "HTTP_THREADS", 16),
        workers=_number(environ, problems, "WEB_CONCURRENCY", 1, most=64),
        mongo_timeout_ms=_number(environ, problems, "MONGO_TIMEOUT_MS", 3000),
        stop_timeout=_number(environ, problems, "STOP_TIMEOUT", 15.0, float),
        recovery_interval=_number(environ, problems, "RECOVERY_INTERVAL", 10.0, float),
        reconcile_interval=_number(environ, problems, "RECONCILE_INTERVAL", 300.0, float),
        lease_seconds=_number(environ, problems, "LEASE_SECONDS", 30.0, float),
        server_name=environ.get("SERVER_NAME", ""),
        late_file_seconds=_number(environ, problems, "LATE_FILE_SECONDS", 300.0, float),
        round_idle_seconds=_number(environ, problems, "ROUND_IDLE_SECONDS", 3600.0, float),
        round_memory_mb=_number(environ, problems, "ROUND_MEMORY_MB", 1024),
        rules=rules,
        **notify_settings(environ, problems),
        **values,
    )
    read_log_level(environ, problems)
    if config.lease_seconds < 1:
        problems.add("LEASE_SECONDS", "LEASE_SECONDS=%r must be at least 1 (a lease is extended every third of it)"
                     % config.lease_seconds)
    problems.raise_any()
    return config
