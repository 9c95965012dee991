"""Where a verdict came from: scorer version, rules, dataset version, time and server.

A verdict can only be re-derived, or a complaint about it answered, when
it says what produced it. :class:`Provenance` is built once when the
service starts (the git commit is read then, not per check) and turns
each check's evidence into the fields written with its verdict.
"""
import dataclasses
import logging
import os
import socket
import subprocess

import scoring
from queues.store import utcnow

log = logging.getLogger(__name__)

#: The checkout holding ``scoring`` (a git work tree when run from one).
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(scoring.__file__)))
#: Seconds a git query may take before the commit is left out.
GIT_TIMEOUT = 5


def git(root, *args):
    """Output of one git command in ``root``, or None when git cannot answer."""
    try:
        done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def scorer_version(root=SOURCE_ROOT):
    """``<package version>``, plus ``+git.<commit>`` (and ``.dirty``) when run from a git checkout.

    Only a checkout whose own top level holds ``.git`` counts, so a copy
    installed inside some other repository is not given that one's commit.
    """
    version = scoring.__version__
    if not os.path.exists(os.path.join(root, ".git")):
        return version
    commit = git(root, "rev-parse", "--verify", "HEAD")
    if not commit:
        return version
    changed = git(root, "status", "--porcelain", "--untracked-files=no")
    return "%s+git.%s%s" % (version, commit, ".dirty" if changed else "")


def server_name(configured=""):
    """The configured name, else ``hostname:pid`` (the pid tells restarts apart)."""
    return configured or "%s:%d" % (socket.gethostname(), os.getpid())


class Provenance:
    """What every verdict written by this process records about its origin."""

    def __init__(self, scorer, server):
        self.scorer = scorer
        self.server = server

    @classmethod
    def current(cls, configured_name=""):
        """Read the scorer's version and this server's name, once."""
        made = cls(scorer_version(), server_name(configured_name))
        log.info("verdicts will record scorer %s, server %s", made.scorer, made.server)
        return made

    def fields(self, check, evidence, rnd, rules):
        """``$set`` fields for one check: its evidence and the provenance beside it.

        ``check`` names the evidence (``consistency``, ``concordance``,
        ``originality``); each check stamps its own ``judged_at`` and
        ``judged_by`` (a submission handed over after a crash is judged by
        two servers: consistency by the first, the checks by the second) and
        the dataset version that check was judged on; the other provenance
        fields are those of the server that wrote last.
        """
        return {
            "evidence.%s" % check: evidence,
            "provenance.scorer_version": self.scorer,
            "provenance.rules": dataclasses.asdict(rules),
            "provenance.dataset_version": rnd.version,
            "provenance.server": self.server,
            "provenance.judged_at.%s" % check: utcnow(),
            "provenance.judged_by.%s" % check: {"server": self.server, "scorer_version": self.scorer,
                                                "dataset_version": rnd.version},
        }
