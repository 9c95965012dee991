"""env.sh.example: sources cleanly as it ships, and the env.sh made from it stays out of git."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from queues.config import REQUIRED, ConfigError, from_env

REPO = Path(__file__).resolve().parents[1]


def test_the_example_sources_cleanly_and_the_server_names_what_is_unfilled():
    """``<YOUR_...>`` placeholders were redirections: sourcing the file was a bash syntax error."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    environ = {key: value for key, value in os.environ.items() if key not in REQUIRED}
    done = subprocess.run(["bash", "-c", 'set -eu; source ./env.sh.example; "$0" -c "import json, os; '
                           'print(json.dumps(dict(os.environ)))"', sys.executable],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    sourced = json.loads(done.stdout)
    with pytest.raises(ConfigError) as raised:
        from_env(sourced)
    for name in REQUIRED:
        assert name in str(raised.value)


def test_env_sh_is_ignored_by_git():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "--no-index", "-q", "env.sh"], cwd=REPO, timeout=30)
    assert done.returncode == 0, "env.sh (which holds the secrets) is not in .gitignore"
