"""Who may ask: one function authenticates every request, the same way on every endpoint.

The key is compared in constant time and never logged or echoed. It is
never accepted in a URL (logs, proxies and browser histories keep URLs):
a request carrying it there is refused with 400 before anything else, on
every endpoint, so a client learns the one rule once.
"""
import hmac

from flask import request

from queues.http.answers import Refused

#: Where each endpoint takes the key from, for the 401 that says it is missing.
IN_BODY = "send it as api_key in the body, or in the X-API-Key header"
IN_HEADER = "send it in the X-API-Key header"
IN_HEADER_OR_BASIC = "send it in the X-API-Key header, or as the password of HTTP Basic authentication"
LOCAL_KEY_HINT = " (local mode: the development key is in the README)"
PLUS_AS_SPACE = ("; it contains a space, which is what a '+' becomes in form fields sent without "
                 "URL-encoding: send '+' as %2B, or send JSON")
#: Query parameter names a key is refused under.
URL_KEY_NAMES = ("api_key", "apikey", "key")


def authenticate(config, where, body=None):
    """Refuse the request (``Refused``) unless it carries the API key where the endpoint takes it.

    ``where`` is one of IN_BODY (``body`` is the request's fields; the
    X-API-Key header also works), IN_HEADER, or IN_HEADER_OR_BASIC (a
    browser's Basic authentication, the key as the password).
    """
    asked = request._get_current_object()  # one proxy lookup: this runs on every request
    if asked.query_string and any(name.lower() in URL_KEY_NAMES for name in asked.args):
        raise Refused(400, "the API key must not be put in a URL, where logs keep it; %s" % where)
    given = body.get("api_key") if where == IN_BODY and body is not None else None
    if given is None:  # a key in the body wins over the header
        given = asked.headers.get("X-API-Key")
    if given is None and where == IN_HEADER_OR_BASIC and asked.authorization is not None \
            and asked.authorization.type == "basic":
        given = asked.authorization.password
    compare(given, config.api_key, where, config.local)


def compare(given, expected, where, local=False):
    """Constant-time comparison of the presented key; 401 saying what to change.

    A wrong key is only said to contain a space, the mark of a '+' sent
    unencoded in a form; the key itself is never echoed.
    """
    if given is None or given == "":
        raise Refused(401, "an API key is required: %s%s" % (where, LOCAL_KEY_HINT if local else ""))
    if not isinstance(given, str):
        raise Refused(401, "the API key must be a string: %s" % where)
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        raise Refused(401, "the API key is not valid" + (PLUS_AS_SPACE if " " in given else ""))
