"""The service around the rules: intake, storage wrappers and the pipeline stages.

``server`` builds these objects and hands each its collaborators; nothing
in this package creates a client or starts a thread at import time.
"""
