"""The HTTP side: request parsing, authentication, answers, and one blueprint per concern.

:func:`queues.app.create_app` assembles them: :mod:`queues.http.submissions`
(intake and status), :mod:`queues.http.verdicts` (explain and report) and
:mod:`queues.http.rescores` (re-scoring a round).
"""
