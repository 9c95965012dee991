"""The judging rules as pure functions over numpy arrays.

Nothing in this package talks to a database, a bucket or the network;
the service in ``queues`` feeds it arrays and records what it decides.
"""

#: The scorer's version, recorded with every verdict (with the git commit when
#: run from a checkout). Raise it whenever a rule could decide differently.
__version__ = "1.1.0"
