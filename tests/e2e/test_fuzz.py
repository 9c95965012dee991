"""Fuzzing the real intake: raw HTTP to ./server under gunicorn never yields a 5xx.

The in-process fuzz test (tests/queues/test_app.py) covers the app; this
one sends bytes over a socket so gunicorn's own request parsing, body
limits and keep-alive handling are in the path too.
"""
import json
import random
import socket

from .conftest import HOST, Predictor, load_round, make_round


def exchange(port, raw, timeout=10):
    """Send ``raw`` on a fresh connection; return the status code, or None if the server just closed."""
    with socket.create_connection((HOST, port), timeout=timeout) as conn:
        conn.sendall(raw)
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        answer = b""
        while b"\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


def request(rng, sid, key):
    """A random request: a plausible one, a broken one, or bytes."""
    body = rng.choice([
        json.dumps({"submission_id": sid, "api_key": key}).encode(),
        json.dumps({"submission_id": rng.choice([sid[:-1], 7, None, [sid]]), "api_key": key}).encode(),
        json.dumps({"submission_id": sid, "api_key": rng.choice(["", "x" * 300, None, 5])}).encode(),
        b"[" * rng.randrange(1, 5000),
        bytes(rng.randrange(256) for _ in range(rng.randrange(64))),
        ("submission_id=%s&api_key=%s" % (sid, key)).encode(),
        b"x" * rng.choice([10, 20000, 70000]),
    ])
    method = rng.choice([b"POST", b"POST", b"POST", b"GET", b"PUT", b"BREW"])
    path = rng.choice([b"/", b"/", b"/submissions/" + sid.encode(), b"/%00", b"/" + b"a" * 5000])
    content_type = rng.choice([b"application/json", b"application/x-www-form-urlencoded", b"text/plain",
                               b"multipart/form-data; boundary=zz", b"\x00\xff"])
    length = str(len(body)).encode() if rng.random() < 0.8 else rng.choice([b"0", b"-1", b"abc", b"99999999"])
    headers = [b"Host: " + HOST.encode(), b"Content-Type: " + content_type, b"Content-Length: " + length]
    if rng.random() < 0.2:
        headers.append(b"X-API-Key: " + rng.choice([key.encode(), b"\x7f\x80"]))
    if rng.random() < 0.1:
        headers.append(b"Transfer-Encoding: chunked")
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9"])
    return b"%s %s %s\r\n%s\r\n\r\n%s" % (method, path, version, b"\r\n".join(headers), body)


def test_random_requests_never_get_a_server_error(storage, start_server):
    rnd = make_round(105, 11)
    sub = rnd.add("fuzz", Predictor(rnd, 11).model())
    load_round(storage, rnd)
    server = start_server()
    rng = random.Random(1122)
    statuses = {}
    for _ in range(400):
        status = exchange(server.port, request(rng, sub.submission_id, server.api_key))
        statuses[status] = statuses.get(status, 0) + 1
        assert status is None or status < 500, (status, server.tail())
    print("fuzz statuses:", statuses)
    assert statuses.get(202, 0) > 0 and statuses.get(400, 0) > 0 and statuses.get(401, 0) > 0
    assert "Traceback" not in server.log_text()
    server.stop()
