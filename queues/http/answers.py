"""What every endpoint answers with: a refusal a client can act on, JSON errors, JSON-friendly values."""
import datetime

from bson import ObjectId
from flask import jsonify

#: Seconds a client should wait before retrying when the database is away or the server is busy.
RETRY_AFTER = 5


class Refused(Exception):
    """A request answered with a 4xx: ``status`` and a ``message`` the client can act on.

    Not called BadRequest: that is Werkzeug's 400, and this carries 401s and 404s too.
    """

    def __init__(self, status, message, **headers):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error(status, message, **headers):
    """A JSON ``{"error": message}`` answer written for the person reading it."""
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


def public(value):
    """Make a document value JSON-friendly (ObjectIds and datetimes as strings)."""
    if isinstance(value, dict):
        return {key: public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public(item) for item in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat() + "Z"
    return value
