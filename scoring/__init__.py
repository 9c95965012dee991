"""The judging rules as pure functions over numpy arrays.

Nothing in this package talks to a database, a bucket or the network;
the service in ``queues`` feeds it arrays and records what it decides.
"""
