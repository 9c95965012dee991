"""The HTTP intake through Flask's test client, against mongomock."""
import io
import json
import logging
import queue
import random
import string
import threading

import pymongo.errors
import pytest
from flask import jsonify

from queues.http import bodies as bodies_module
from queues.http import submissions as submissions_module
from queues.app import create_app
from queues.http.bodies import MAX_BODY_BYTES
from queues.config import LOCAL_API_KEY, Config
from queues.pipeline import DISPATCH
from tests.conftest import API_KEY


def post(client, **body):
    return client.post("/", json=body)


def test_accepts_a_submission_and_queues_it_once(client, submit, store, pipeline, model):
    sid = submit("zuz", model(1))
    response = post(client, submission_id=sid, api_key=API_KEY, user_id="zuz")
    assert response.status_code == 202
    assert response.get_json() == {"submission_id": sid, "status": "queued", "duplicate": False}
    processing = store.get(sid)["processing"]
    assert processing["state"] == "queued"
    job = pipeline.queues[DISPATCH].get_nowait()
    assert job.submission_id == sid
    # the job carries the lease the intake wrote, so the dispatcher can claim it and nobody else
    assert job.token is not None and job.claim is None
    assert processing["lease"]["token"] == job.token and processing["lease"]["owner"] == store.owner
    assert store.claim(sid) is None
    assert store.claim(sid, token=job.token) is not None

    again = post(client, submission_id=sid, api_key=API_KEY)
    assert again.status_code == 202
    assert again.get_json()["duplicate"] is True
    assert pipeline.queues[DISPATCH].empty()


def test_the_202_is_byte_for_byte_what_jsonify_wrote(app, client, submit, model):
    """POST / formats its answer itself (it is the path served most); clients see no change."""
    sid = submit("zuz", model(1))
    for duplicate in (False, True):
        response = post(client, submission_id=sid.upper(), api_key=API_KEY)
        with app.app_context():
            expected = jsonify(submission_id=sid, status="queued", duplicate=duplicate)
        assert (response.status_code, response.content_type) == (202, expected.content_type)
        assert response.get_data() == expected.get_data()


def test_accepts_form_fields(client, submit, model, pipeline):
    sid = submit("zuz", model(1))
    response = client.post("/", data={"submission_id": sid, "api_key": API_KEY})
    assert response.status_code == 202
    assert pipeline.depth(DISPATCH) == 1


def test_uppercase_ids_are_the_same_submission(client, submit, model, pipeline):
    sid = submit("zuz", model(1))
    assert post(client, submission_id=sid.upper(), api_key=API_KEY).status_code == 202
    assert pipeline.queues[DISPATCH].get_nowait().submission_id == sid


@pytest.mark.parametrize("key", [None, "", "wrong", API_KEY + "x", API_KEY[:-1], 12345])
def test_rejects_a_missing_or_wrong_key_without_echoing_it(client, submit, model, pipeline, store, key, caplog):
    caplog.set_level(logging.DEBUG)
    sid = submit("zuz", model(1))
    body = {"submission_id": sid}
    if key is not None:
        body["api_key"] = key
    response = client.post("/", json=body)
    assert response.status_code == 401
    assert "error" in response.get_json()
    if isinstance(key, str) and key:
        assert key not in response.get_data(as_text=True)
        assert key not in caplog.text
    assert API_KEY not in response.get_data(as_text=True)
    assert pipeline.depth(DISPATCH) == 0
    assert "processing" not in store.get(sid)


def test_the_key_is_never_logged_on_success(client, submit, model, caplog):
    caplog.set_level(logging.DEBUG)
    sid = submit("zuz", model(1))
    assert post(client, submission_id=sid, api_key=API_KEY).status_code == 202
    assert API_KEY not in caplog.text


@pytest.mark.parametrize("data, content_type", [
    ("[1, 2]", "application/json"),
    ('"just a string"', "application/json"),
    ("42", "application/json"),
    ("", "application/json"),
    ("submission_id=abc", "text/plain"),
])
def test_rejects_bodies_that_are_not_objects(client, data, content_type):
    response = client.post("/", data=data, content_type=content_type)
    assert response.status_code == 400
    assert "JSON object" in response.get_json()["error"]


@pytest.mark.parametrize("submission_id, message", [
    (None, "required"),
    ("", "required"),
    ("58d411e5727861120", "ObjectId"),
    ("zz d411e57278611200ee49a6", "ObjectId"),
    (12345, "ObjectId"),
    (["58d411e57278611200ee49a6"], "ObjectId"),
])
def test_rejects_bad_submission_ids(client, submission_id, message):
    body = {"api_key": API_KEY}
    if submission_id is not None:
        body["submission_id"] = submission_id
    response = client.post("/", json=body)
    assert response.status_code == 400
    assert message in response.get_json()["error"]


def test_rejects_a_user_id_that_is_not_text(client, submit, model):
    sid = submit("zuz", model(1))
    assert post(client, submission_id=sid, api_key=API_KEY, user_id={"a": 1}).status_code == 400


def test_unknown_submission_is_404(client, pipeline):
    response = post(client, submission_id="5" * 24, api_key=API_KEY)
    assert response.status_code == 404
    assert "5" * 24 in response.get_json()["error"]
    assert pipeline.depth(DISPATCH) == 0


def test_oversized_bodies_are_413(client):
    body = json.dumps({"submission_id": "5" * 24, "api_key": API_KEY, "pad": "x" * MAX_BODY_BYTES})
    response = client.post("/", data=body, content_type="application/json")
    assert response.status_code == 413
    assert "16 KiB (16384 bytes) limit" in response.get_json()["error"]


def chunked(client, path, body, content_type="application/json"):
    """A body sent chunked, as a WSGI server that decodes chunks (gunicorn) hands it over: no Content-Length."""
    return client.post(path, input_stream=io.BytesIO(body), content_type=content_type,
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


@pytest.fixture
def rescoring(store, pipeline, config, supervisor, metrics):
    """A client whose app re-scores (with a rescorer nothing reaches: the body is refused first)."""
    return create_app(store, pipeline, config, supervisor, metrics, rescorer=object()).test_client()


@pytest.mark.parametrize("path", ["/", "/rounds/41/rescore"])
def test_a_chunked_body_over_the_limit_is_413_like_any_other(rescoring, path):
    """It has no Content-Length: Werkzeug cut it at the limit and the cut JSON was answered 400."""
    body = json.dumps({"submission_id": "5" * 24, "api_key": API_KEY, "pad": "x" * MAX_BODY_BYTES}).encode()
    response = chunked(rescoring, path, body)
    assert response.status_code == 413, response.get_json()
    assert "16 KiB (16384 bytes) limit" in response.get_json()["error"]


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(client, submit, model, pipeline):
    sid = submit("zuz", model(1))
    body = json.dumps({"submission_id": sid, "api_key": API_KEY, "pad": ""}).encode()
    body = body[:-2] + b" " * (MAX_BODY_BYTES - len(body)) + body[-2:]
    assert len(body) == MAX_BODY_BYTES
    assert chunked(client, "/", body).status_code == 202
    assert chunked(client, "/", body[:-1000] + b"}").status_code in (202, 400)  # a short one is read as sent


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "application/json", "text/plain", None])
def test_a_json_typo_is_400_saying_what_and_where(client, submit, model, pipeline, content_type, caplog):
    """The 2017 curl form with a typo (here a missing closing brace) was read as a form without a key: 401."""
    sid = submit("zuz", model(1))
    body = '{"submission_id": "%s", "api_key": "%s"' % (sid, API_KEY)
    response = client.post("/", data=body, content_type=content_type)
    assert response.status_code == 400, response.get_json()
    message = response.get_json()["error"]
    assert message == "the body is not valid JSON: Expecting ',' delimiter at line 1, column %d (character %d)" % (
        len(body) + 1, len(body) + 1)
    assert API_KEY not in response.get_data(as_text=True) and API_KEY not in caplog.text
    assert pipeline.depth(DISPATCH) == 0


@pytest.mark.parametrize("body, where", [('{"submission_id": "x",\n "api_key": \'k\'}', "line 2, column 13"),
                                         ("[1, 2,]", "line 1, column 7"),
                                         ('  {"a": 1} x', "line 1, column 12")])
def test_the_json_error_names_its_line_and_column(client, body, where):
    message = client.post("/", data=body, content_type="application/x-www-form-urlencoded").get_json()["error"]
    assert message.startswith("the body is not valid JSON: ") and where in message, message


def test_a_rescore_body_with_a_json_typo_says_so_too(rescoring):
    response = rescoring.post("/rounds/41/rescore", data='{"dry_run": true', headers={"X-API-Key": API_KEY})
    assert response.status_code == 400 and "not valid JSON" in response.get_json()["error"]


class AwayStore:
    """A store whose database cannot be reached."""

    def __getattr__(self, name):
        def unreachable(*args, **kwargs):
            raise pymongo.errors.ServerSelectionTimeoutError("no servers")
        return unreachable


def test_database_away_is_503_with_retry_after_and_nothing_queued(pipeline, config, supervisor, metrics):
    client = create_app(AwayStore(), pipeline, config, supervisor, metrics).test_client()
    response = post(client, submission_id="5" * 24, api_key=API_KEY)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert "database" in response.get_json()["error"]
    assert pipeline.depth(DISPATCH) == 0
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["database"].startswith("unavailable")


def test_status_shows_what_is_stored(client, submit, model, store):
    sid = submit("zuz", model(1))
    assert client.get("/submissions/" + sid).status_code == 401
    assert client.get("/submissions/" + sid, headers={"X-API-Key": "nope"}).status_code == 401
    post(client, submission_id=sid, api_key=API_KEY)
    store.submissions.update_one({"_id": store.get(sid)["_id"]},
                                 {"$set": {"consistency": 75.0, "concordant": {"pending": True}}})
    body = client.get("/submissions/" + sid, headers={"X-API-Key": API_KEY}).get_json()
    assert body["submission_id"] == sid
    assert body["status"] == "queued"
    assert body["consistency"] == 75.0
    assert body["concordant"] == {"pending": True}
    assert body["original"] is None
    assert body["processing"]["attempts"] == 1
    assert body["processing"]["queued_at"].endswith("Z")
    for internal in ("lease", "fence", "board", "dispatched"):  # the service's bookkeeping stays inside
        assert internal not in body["processing"]
    assert "token" not in json.dumps(body) and str(store.get(sid)["processing"]["lease"]["token"]) not in json.dumps(body)
    assert client.get("/submissions/" + "6" * 24, headers={"X-API-Key": API_KEY}).status_code == 404
    assert client.get("/submissions/nothex", headers={"X-API-Key": API_KEY}).status_code == 400


def test_health_reports_threads_database_and_queues(client, supervisor, pipeline):
    supervisor.add("idle", lambda: pipeline.stop.wait())
    supervisor.start()
    try:
        body = client.get("/health")
        assert body.status_code == 200
        data = body.get_json()
        assert data["database"] == "ok"
        assert data["threads"] == {"idle": True, "supervisor": True}
        assert set(data["queues"]) == {"dispatch", "concordance", "originality"}
        assert API_KEY not in body.get_data(as_text=True)
    finally:
        assert supervisor.stop(5) == []
    assert client.get("/health").status_code == 503


def test_metrics_are_prometheus_text(client, submit, model):
    post(client, submission_id=submit("zuz", model(1)), api_key=API_KEY)
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert 'criteria_queue_depth{queue="dispatch"} 1.0' in text
    assert 'criteria_http_requests_total{endpoint="/",status="202"} 1.0' in text


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/nowhere").status_code == 404
    response = client.get("/")
    assert response.status_code == 405
    assert "error" in response.get_json()


FUZZ_TYPES = ["application/json", "application/x-www-form-urlencoded", "multipart/form-data",
              "text/plain", "application/octet-stream", "", "application/json; charset=latin-1", "garbage/\x00"]


def fuzz_body(rng, sid):
    """A random body: valid-looking, broken, binary, nested or huge."""
    choice = rng.randrange(8)
    if choice == 0:
        return json.dumps({"submission_id": rng.choice([sid, sid.upper(), sid[:-1], None, 5, [sid], {"$gt": ""}]),
                           "api_key": rng.choice([API_KEY, "", None, 0, [API_KEY], "\udcff"]),
                           "user_id": rng.choice(["zuz", None, 3, {"x": 1}])}).encode("utf-8", "surrogatepass")
    if choice == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
    if choice == 2:
        return ("submission_id=%s&api_key=%s" % (sid, rng.choice([API_KEY, "%ZZ", "%00"]))).encode()
    if choice == 3:
        return ("[" * rng.randrange(1, 3000)).encode()
    if choice == 4:
        return json.dumps({"submission_id": sid, "api_key": API_KEY, "x": "y" * rng.randrange(20000)}).encode()
    if choice == 5:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(100))).encode()
    if choice == 6:
        return b'{"submission_id": "%s", "api_key": "%s"' % (sid.encode(), API_KEY.encode())
    return json.dumps(rng.choice([None, True, 1.5, "x", [], {}, {"api_key": API_KEY}])).encode()


def test_fuzzed_requests_never_get_a_server_error(client, submit, model):
    """Random bodies, content types and headers: every answer is a 2xx or 4xx with a JSON error."""
    rng = random.Random(20261122)
    sid = submit("zuz", model(1))
    statuses = {}
    for _ in range(600):
        headers = {}
        if rng.random() < 0.3:
            headers["Content-Length"] = str(rng.choice([0, 1, 10 ** 9]))
        if rng.random() < 0.2:
            headers["Transfer-Encoding"] = "chunked"
        if rng.random() < 0.2:
            headers["X-API-Key"] = rng.choice([API_KEY, "", "\x7f"])
        path = rng.choice(["/", "/", "/", "/submissions/" + sid, "/submissions/%00", "/submissions/" + "\u00e9" * 24])
        method = rng.choice(["POST", "POST", "GET", "PUT"])
        response = client.open(path, method=method, data=fuzz_body(rng, sid),
                               content_type=rng.choice(FUZZ_TYPES), headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (method, path, response.status_code, response.get_data()[:200])
        if response.status_code >= 400:
            assert "error" in (response.get_json(silent=True) or {}), response.get_data()[:200]
    assert 202 in statuses and 400 in statuses and 401 in statuses


class CountingStore:
    """Counts the round trips the intake makes to the store."""

    def __init__(self, store):
        self.store = store
        self.accepts = 0

    def accept_many(self, ids, token):
        self.accepts += 1
        return self.store.accept_many(ids, token)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_repeat_of_a_submission_in_flight_needs_no_database_round_trip(store, pipeline, config, supervisor,
                                                                         metrics, submit, model):
    counting = CountingStore(store)
    client = create_app(counting, pipeline, config, supervisor, metrics).test_client()
    sid = submit("zuz", model(1))
    assert post(client, submission_id=sid, api_key=API_KEY).get_json()["duplicate"] is False
    for _ in range(5):
        assert post(client, submission_id=sid, api_key=API_KEY).get_json()["duplicate"] is True
    assert counting.accepts == 1
    job = pipeline.queues[DISPATCH].get_nowait()
    pipeline.done(DISPATCH, job)  # the worker let it go: the next request asks the database
    store.submissions.update_one({}, {"$set": {"processing.state": "done"}})
    assert post(client, submission_id=sid, api_key=API_KEY).get_json()["duplicate"] is False
    assert counting.accepts == 2


class Requests:
    """Stands in for the pipeline's intake marker: records each request it wraps."""

    def __init__(self):
        self.started = self.ended = 0

    def __enter__(self):
        self.started += 1

    def __exit__(self, *exc_info):
        self.ended += 1


def test_posts_make_judging_give_way_but_reads_do_not(client, submit, model, pipeline, monkeypatch):
    """Every POST / is the intake's work, a refused one too: judging waits while one is in progress.
    A client polling GET /submissions/<id> waits for that judging, so reads must not hold it up."""
    marked = Requests()
    monkeypatch.setattr(pipeline, "intake", marked)
    sid = submit("zuz", model(1))
    assert post(client, submission_id=sid, api_key=API_KEY).status_code == 202
    assert post(client, submission_id=sid, api_key="wrong").status_code == 401
    assert client.post("/", data=b"[1]", content_type="application/json").status_code == 400
    assert (marked.started, marked.ended) == (3, 3)
    assert client.get("/submissions/" + sid, headers={"X-API-Key": API_KEY}).status_code == 200
    client.get("/health")
    client.get("/metrics")
    assert (marked.started, marked.ended) == (3, 3)


def test_no_name_in_the_app_shadows_a_werkzeug_exception():
    """``BadRequest`` meant Werkzeug's 400 everywhere but here, where it also carried 401s and 404s."""
    import werkzeug.exceptions

    from queues import app as module
    theirs = {name: value for name, value in vars(werkzeug.exceptions).items()
              if isinstance(value, type) and issubclass(value, werkzeug.exceptions.HTTPException)}
    shadowed = [name for name, value in vars(module).items() if name in theirs and value is not theirs[name]]
    assert shadowed == []


# -- the 2017 request forms -------------------------------------------------------------
def test_the_2017_curl_form_a_json_body_labelled_as_a_form_is_accepted(client, submit, model, pipeline):
    """``curl -X POST -d '{...}'`` labels JSON as application/x-www-form-urlencoded."""
    sid = submit("zuz", model(1))
    body = json.dumps({"user": "zuz", "submission_id": sid, "competition_id": 41, "api_key": API_KEY})
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        response = client.post("/", data=body, content_type=content_type)
        assert response.status_code == 202, response.get_json()
    assert pipeline.depth(DISPATCH) == 1


def test_the_2017_requests_form_with_user_and_competition_id(client, submit, model, pipeline):
    """``requests.post(url, data={'user': ..., 'submission_id': ..., 'competition_id': 41})``: all text."""
    sid = submit("zuz", model(1))
    response = client.post("/", data={"user": "zuz", "submission_id": sid, "competition_id": "41", "api_key": API_KEY})
    assert response.status_code == 202, response.get_json()
    assert pipeline.depth(DISPATCH) == 1


@pytest.mark.parametrize("given", [40, "40", 40.0])
def test_a_competition_id_other_than_the_submissions_round_is_400(client, submit, model, pipeline, store, given):
    sid = submit("zuz", model(1))
    response = post(client, submission_id=sid, api_key=API_KEY, competition_id=given)
    assert response.status_code == 400
    assert response.get_json()["error"] == "submission %s belongs to round 41, not to competition_id 40" % sid
    assert pipeline.depth(DISPATCH) == 0 and "processing" not in store.get(sid)


@pytest.mark.parametrize("given", ["round 41", True, 41.5, [41], {"n": 41}, "-41"])
def test_a_competition_id_that_is_not_a_round_number_is_400(client, submit, model, given):
    response = post(client, submission_id=submit("zuz", model(1)), api_key=API_KEY, competition_id=given)
    assert response.status_code == 400
    assert "competition_id" in response.get_json()["error"]


def test_a_competition_id_with_an_unknown_submission_is_404(client):
    response = post(client, submission_id="5" * 24, api_key=API_KEY, competition_id=41)
    assert response.status_code == 404


@pytest.mark.parametrize("body, status", [
    ({"user": "zuz"}, 202),
    ({"user_id": "zuz", "user": "zuz"}, 202),
    ({"user_id": "zuz", "user": "bob"}, 400),
    ({"user": 7}, 400),
    ({"user": ""}, 202),
])
def test_user_is_another_name_for_user_id(client, submit, model, body, status):
    response = post(client, submission_id=submit("zuz", model(1)), api_key=API_KEY, **body)
    assert response.status_code == status, response.get_json()


@pytest.mark.parametrize("field", ["user_id", "user"])
def test_a_user_other_than_the_submissions_owner_is_400(client, submit, model, pipeline, store, field):
    """Like competition_id: a request that names something is checked against the submission, not ignored."""
    sid = submit("zuz", model(1))
    response = post(client, submission_id=sid, api_key=API_KEY, **{field: "bob"})
    assert response.status_code == 400
    assert response.get_json()["error"] == "submission %s belongs to zuz, not bob" % sid
    assert pipeline.depth(DISPATCH) == 0 and "processing" not in store.get(sid)
    form = client.post("/", data={"submission_id": sid, "api_key": API_KEY, field: "bob", "competition_id": "41"})
    assert form.status_code == 400 and "belongs to zuz, not bob" in form.get_json()["error"]


def test_a_user_with_an_unknown_submission_is_404(client):
    assert post(client, submission_id="5" * 24, api_key=API_KEY, user_id="zuz").status_code == 404


def test_a_missing_key_says_where_it_goes(client, submit, model):
    sid = submit("zuz", model(1))
    message = post(client, submission_id=sid).get_json()["error"]
    assert "api_key" in message and "X-API-Key" in message
    assert "README" not in message  # production has no development key to point to
    message = client.get("/submissions/" + sid).get_json()["error"]
    assert "X-API-Key" in message


@pytest.mark.parametrize("method, path", [("POST", "/"), ("GET", "/submissions/%s"), ("GET", "/submissions/%s/explain"),
                                          ("GET", "/submissions/%s/report"), ("POST", "/rounds/41/rescore"),
                                          ("GET", "/rounds/41/rescore")])
@pytest.mark.parametrize("header", [False, True], ids=["key only in the URL", "and in the header"])
def test_a_key_in_the_url_gets_the_same_answer_everywhere(store, pipeline, supervisor, metrics, submit, model,
                                                          method, path, header):
    """It used to get 401 "required" on POST /, 401 with a reason on GET, and 400 on /explain."""
    app = create_app(store, pipeline, Config(api_key=API_KEY), supervisor, metrics, rescorer=object())
    sid = submit("zuz", model(1))
    url = (path % sid if "%s" in path else path) + "?api_key=" + API_KEY
    answer = app.test_client().open(url, method=method, json={"submission_id": sid} if path == "/" else None,
                                    headers={"X-API-Key": API_KEY} if header else {})
    assert answer.status_code == 400
    assert "must not be put in a URL" in answer.get_data(as_text=True)
    assert API_KEY not in answer.get_data(as_text=True)


def test_in_local_mode_a_missing_key_points_to_the_readme(store, pipeline, supervisor, metrics, submit, model):
    local = create_app(store, pipeline, Config(api_key=LOCAL_API_KEY, local=True), supervisor, metrics).test_client()
    sid = submit("zuz", model(1))
    assert "development key is in the README" in post(local, submission_id=sid).get_json()["error"]
    assert "development key is in the README" in local.get("/submissions/" + sid).get_json()["error"]


def test_the_key_may_come_in_the_header_of_a_post(client, submit, model, pipeline):
    sid = submit("zuz", model(1))
    assert client.post("/", json={"submission_id": sid}, headers={"X-API-Key": API_KEY}).status_code == 202
    assert client.post("/", json={"submission_id": sid}, headers={"X-API-Key": "wrong"}).status_code == 401


def test_a_key_in_the_body_counts_whatever_the_header_says(client, submit, model):
    """The body's api_key is read first and the header only when the body has none."""
    sid = submit("zuz", model(1))
    assert client.post("/", json={"submission_id": sid, "api_key": API_KEY}, headers={"X-API-Key": "wrong"}).status_code == 202
    assert client.post("/", json={"submission_id": sid, "api_key": "wrong"}, headers={"X-API-Key": API_KEY}).status_code == 401
    assert client.post("/", json={"submission_id": sid, "api_key": None}, headers={"X-API-Key": API_KEY}).status_code == 202


def test_a_plus_sent_unencoded_in_a_form_is_explained(store, pipeline, supervisor, metrics, submit, model, caplog):
    """The development key has a '+'; a hand-written form turns it into a space."""
    local = create_app(store, pipeline, Config(api_key=LOCAL_API_KEY, local=True), supervisor, metrics).test_client()
    sid = submit("zuz", model(1))
    raw = "submission_id=%s&api_key=%s" % (sid, LOCAL_API_KEY)
    response = local.post("/", data=raw, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 401
    message = response.get_json()["error"]
    assert "%2B" in message and "space" in message
    assert LOCAL_API_KEY.replace("+", " ") not in response.get_data(as_text=True) + caplog.text
    encoded = "submission_id=%s&api_key=%s" % (sid, LOCAL_API_KEY.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"))
    assert local.post("/", data=encoded, content_type="application/x-www-form-urlencoded").status_code == 202
    wrong = local.post("/", json={"submission_id": sid, "api_key": "not-the-key"}).get_json()["error"]
    assert "%2B" not in wrong  # only a key with a space gets the hint


# -- a database that rejects the server's settings ------------------------------------------
class RejectingStore:
    """A store whose database answers, but refuses the server: ``methods`` raise ``error``."""

    def __init__(self, store, error, methods):
        self.store, self.error, self.methods = store, error, methods

    def __getattr__(self, name):
        if name not in self.methods:
            return getattr(self.store, name)

        def rejected(*args, **kwargs):
            raise self.error
        return rejected


SECRET_IN_ERROR = "pw-7f3a-in-the-driver-message"


@pytest.mark.parametrize("error, setting", [
    (pymongo.errors.OperationFailure("Authentication failed for judge:" + SECRET_IN_ERROR, code=18), "MONGO_URL"),
    (pymongo.errors.ServerSelectionTimeoutError(
        "authentication failed, full error: {'ok': 0.0, 'errmsg': 'authentication failed', 'code': 18, "
        "'codeName': 'AuthenticationFailed', 'x': '%s'}" % SECRET_IN_ERROR), "MONGO_URL"),
], ids=["auth-failed", "auth-failed-later"])
def test_rejected_credentials_are_a_500_naming_the_misconfiguration(store, pipeline, config, supervisor, metrics,
                                                                    submit, model, error, setting):
    sid = submit("zuz", model(1))
    client = create_app(RejectingStore(store, error, ("ping", "get", "accept_many")), pipeline, config,
                        supervisor, metrics).test_client()
    for response in (post(client, submission_id=sid, api_key=API_KEY),
                     client.get("/submissions/" + sid, headers={"X-API-Key": API_KEY})):
        assert response.status_code == 500
        message = response.get_json()["error"]
        assert "misconfigured" in message and setting in message and "AuthenticationFailed" in message
        assert "Retry-After" not in response.headers  # retrying will not help
        assert SECRET_IN_ERROR not in response.get_data(as_text=True)
    assert pipeline.depth(DISPATCH) == 0
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["database"].startswith("misconfigured: ") and setting in health.get_json()["database"]


def test_health_notices_a_user_without_rights_although_ping_answers(store, pipeline, config, supervisor, metrics):
    not_authorised = pymongo.errors.OperationFailure("not authorized on numerai to execute command { find }", code=13)
    client = create_app(RejectingStore(store, not_authorised, ("get",)), pipeline, config,
                        supervisor, metrics).test_client()
    body = client.get("/health").get_json()
    assert body["database"].startswith("misconfigured: ") and "Unauthorized" in body["database"]
    assert "MONGO_DB_NAME" in body["database"]


# -- GET /submissions/<id>?wait=<seconds> ---------------------------------------------------
class Reads:
    """A store whose ``get`` reports each state it reads on a queue: the test knows a request is waiting."""

    def __init__(self, store):
        self.store = store
        self.seen = queue.Queue()

    def get(self, submission_id):
        doc = self.store.get(submission_id)
        self.seen.put(((doc or {}).get("processing") or {}).get("state"))
        return doc

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.fixture
def waiting(store, pipeline, supervisor, metrics, monkeypatch):
    """An app with room for one waiting request, a quick poll, and a store that reports its reads."""
    monkeypatch.setattr(submissions_module, "WAIT_POLL", 0.01)
    reads = Reads(store)
    client = create_app(reads, pipeline, Config(api_key=API_KEY, http_threads=3), supervisor, metrics).test_client()
    return client, reads


def get_in_thread(client, path):
    """GET on another thread; returns (thread, box) where box['response'] appears when it answers."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(response=client.get(path, headers={"X-API-Key": API_KEY})))
    thread.start()
    return thread, box


def settle(store, sid, state="done"):
    store.submissions.update_one({"_id": store.get(sid)["_id"]}, {"$set": {"processing.state": state}})


@pytest.mark.parametrize("state", ["done", "failed"])
def test_wait_answers_as_soon_as_the_submission_is_settled(waiting, store, submit, model, state):
    client, reads = waiting
    sid = submit("zuz", model(1))
    assert post(client, submission_id=sid, api_key=API_KEY).status_code == 202
    thread, box = get_in_thread(client, "/submissions/%s?wait=30" % sid)
    assert reads.seen.get(timeout=10) == "queued"  # the request read it unsettled: it is waiting
    settle(store, sid, state)
    thread.join(20)  # well before the 30 s the request asked for
    assert not thread.is_alive()
    assert box["response"].status_code == 200 and box["response"].get_json()["status"] == state


def test_wait_ends_at_its_deadline_with_the_state_as_it_is(waiting, submit, model):
    client, reads = waiting
    sid = submit("zuz", model(1))
    post(client, submission_id=sid, api_key=API_KEY)
    response = client.get("/submissions/%s?wait=0.05" % sid, headers={"X-API-Key": API_KEY})
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
    assert reads.seen.qsize() >= 2  # it looked again before giving up


def test_waits_are_cut_to_the_maximum(waiting, submit, model, monkeypatch):
    client, reads = waiting
    monkeypatch.setattr(bodies_module, "MAX_WAIT", 0.05)
    sid = submit("zuz", model(1))
    post(client, submission_id=sid, api_key=API_KEY)
    thread, box = get_in_thread(client, "/submissions/%s?wait=1e9" % sid)
    thread.join(20)
    assert not thread.is_alive() and box["response"].get_json()["status"] == "queued"


def test_a_settled_or_unknown_submission_answers_at_once(waiting, store, submit, model):
    client, reads = waiting
    sid = submit("zuz", model(1))
    post(client, submission_id=sid, api_key=API_KEY)
    settle(store, sid)
    while not reads.seen.empty():
        reads.seen.get()
    assert client.get("/submissions/%s?wait=30" % sid, headers={"X-API-Key": API_KEY}).get_json()["status"] == "done"
    assert reads.seen.qsize() == 1
    assert client.get("/submissions/%s?wait=30" % ("6" * 24), headers={"X-API-Key": API_KEY}).status_code == 404


def test_waiting_requests_are_capped_and_told_so(waiting, store, submit, model):
    """HTTP_THREADS=3 allows one waiting request: the next waits for nothing and gets a 429."""
    client, reads = waiting
    first, second = submit("zuz", model(1)), submit("bob", model(2))
    for sid in (first, second):
        post(client, submission_id=sid, api_key=API_KEY)
    thread, box = get_in_thread(client, "/submissions/%s?wait=30" % first)
    assert [reads.seen.get(timeout=10) for _ in range(2)] == ["queued"] * 2  # read again: it holds the place
    refused = client.get("/submissions/%s?wait=30" % second, headers={"X-API-Key": API_KEY})
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert "too many requests are waiting" in refused.get_json()["error"] and "(limit 1" in refused.get_json()["error"]
    assert "without wait" in refused.get_json()["error"]
    plain = client.get("/submissions/" + second, headers={"X-API-Key": API_KEY})
    assert plain.status_code == 200 and plain.get_json()["status"] == "queued"  # without wait: no limit
    settle(store, first)
    thread.join(20)
    assert not thread.is_alive() and box["response"].get_json()["status"] == "done"
    settle(store, second)
    again = client.get("/submissions/%s?wait=30" % second, headers={"X-API-Key": API_KEY})
    assert again.status_code == 200  # the slot is free again


def test_stopping_the_server_ends_every_wait(waiting, pipeline, submit, model):
    client, reads = waiting
    sid = submit("zuz", model(1))
    post(client, submission_id=sid, api_key=API_KEY)
    thread, box = get_in_thread(client, "/submissions/%s?wait=30" % sid)
    assert reads.seen.get(timeout=10) == "queued"
    pipeline.stop.set()
    thread.join(20)
    assert not thread.is_alive() and box["response"].get_json()["status"] == "queued"


@pytest.mark.parametrize("wait", ["abc", "-1", "nan", ""])
def test_a_wait_that_is_not_a_number_of_seconds_is_400(client, submit, model, wait):
    sid = submit("zuz", model(1))
    response = client.get("/submissions/%s?wait=%s" % (sid, wait), headers={"X-API-Key": API_KEY})
    assert response.status_code == 400 and "wait must be a number of seconds" in response.get_json()["error"]


def test_waiting_requests_are_counted_on_metrics(waiting, store, metrics, submit, model):
    client, reads = waiting
    sid = submit("zuz", model(1))
    post(client, submission_id=sid, api_key=API_KEY)
    gauge = 'criteria_http_waiting_requests %s'
    assert gauge % "0.0" in client.get("/metrics").get_data(as_text=True)
    thread, box = get_in_thread(client, "/submissions/%s?wait=30" % sid)
    assert [reads.seen.get(timeout=10) for _ in range(2)] == ["queued"] * 2  # read again: it is counted
    assert gauge % "1.0" in client.get("/metrics").get_data(as_text=True)
    settle(store, sid)
    thread.join(20)
    assert gauge % "0.0" in client.get("/metrics").get_data(as_text=True)


def test_a_server_with_one_http_thread_lets_no_request_wait(store, pipeline, supervisor, metrics, submit, model):
    """A waiting request would take the only thread: it is told to ask without wait instead."""
    client = create_app(store, pipeline, Config(api_key=API_KEY, http_threads=1), supervisor, metrics).test_client()
    sid = submit("zuz", model(1))
    post(client, submission_id=sid, api_key=API_KEY)
    response = client.get("/submissions/%s?wait=30" % sid, headers={"X-API-Key": API_KEY})
    assert response.status_code == 429 and "(limit 0" in response.get_json()["error"]
    assert client.get("/submissions/" + sid, headers={"X-API-Key": API_KEY}).status_code == 200
