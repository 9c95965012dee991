"""The one error ``scoring`` raises about the data it is given.

A rule that cannot judge its input (a broken submission file, a round's
data that cannot support a check, predictions of the wrong length)
raises :class:`DataError` with a message a person can act on. Any other
exception out of ``scoring`` (a plain ValueError from numpy, say) is a
bug, and the service treats it as one; this class is how the service
tells the two apart without reading messages.
"""


class DataError(ValueError):
    """The data cannot be judged; the message says why, for a person."""
