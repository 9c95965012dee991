"""GET /submissions/<id>/explain and /report through Flask's test client, on a judged round."""
import base64
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from queues.app import create_app
from queues.report import CDF_POINTS, Reports, cdf_figure, ks_gap, to_svg
from queues.members import RoundMembers
from scoring.ks import ks_statistic
from tests.conftest import API_KEY
from tests.queues.test_workers import Board, drain, make_stages, queue

EVIL = "<script>alert('x')</script>$\\alpha$&"


def basic(password, user="support"):
    return {"Authorization": "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()}


def judge(store, pipeline, rounds, rules, metrics, *ids):
    """Run the three stages on each submission, as the pipeline would."""
    stages = make_stages(pipeline, store, rounds, rules, metrics, Board(), RoundMembers(store))
    for sid in ids:
        queue(store, pipeline, sid)
        assert {outcome for *_, outcome in drain(pipeline, stages)} == {"ok"}


@pytest.fixture
def judged(submit, store, pipeline, rounds, rules, metrics, model):
    """A judged round: alice, bob, a near copy of alice's by a user with a hostile name, and a broken file."""
    first = model(1)
    ids = {"mallory": submit("mallory", raw=b"id,probability\n"),
           "alice": submit("alice", first), "bob": submit("bob", model(2)),
           "copier": submit(EVIL, np.clip(first + 1e-5, 0, 1))}
    judge(store, pipeline, rounds, rules, metrics, *[ids[u] for u in ("alice", "bob", "copier")])
    return ids


@pytest.fixture
def reporting(store, pipeline, config, supervisor, metrics, rounds):
    metrics.watch(pipeline, supervisor)
    return create_app(store, pipeline, config, supervisor, metrics, rounds=rounds).test_client()


# -- /explain ---------------------------------------------------------------------------
def test_explain_answers_evidence_provenance_and_sentences(reporting, judged, store):
    response = reporting.get("/submissions/%s/explain" % judged["copier"], headers={"X-API-Key": API_KEY})
    assert response.status_code == 200
    body = response.get_json()
    doc = store.get(judged["copier"])
    assert body["status"] == "done" and body["username"] == EVIL
    assert body["verdicts"]["originality"] == {"pending": False, "value": False}
    assert body["evidence"]["originality"] == doc["evidence"]["originality"]
    assert body["evidence"]["concordance"] == doc["evidence"]["concordance"]
    assert body["evidence"]["consistency"] == doc["evidence"]["consistency"]
    assert body["provenance"]["dataset_version"] == doc["provenance"]["dataset_version"]
    assert set(body["provenance"]["judged_at"]) == {"consistency", "concordance", "originality"}
    assert body["sentences"]["originality"].startswith("not original: its predictions")
    assert "alice's submission %s" % judged["alice"] in body["sentences"]["originality"]
    assert "1 earlier submission left out" in body["sentences"]["originality"]
    assert re.match(r"consistency [\d.]+%: \d+ of 4 validation eras beat the benchmark 0\.6931", body["sentences"]["consistency"])
    assert body["sentences"]["concordance"].startswith(("concordant: mean per-cluster KS", "not concordant: mean"))


def test_explain_takes_basic_auth_too(reporting, judged):
    assert reporting.get("/submissions/%s/explain" % judged["alice"], headers=basic(API_KEY)).status_code == 200


def test_explain_refusals(reporting, judged, submit, model):
    url = "/submissions/%s/explain" % judged["alice"]
    assert reporting.get(url).status_code == 401
    assert reporting.get(url, headers={"X-API-Key": "wrong"}).status_code == 401
    assert reporting.get(url, headers=basic("wrong")).status_code == 401
    missing = reporting.get("/submissions/%s/explain" % ("0" * 24), headers={"X-API-Key": API_KEY})
    assert missing.status_code == 404 and "no submission" in missing.get_json()["error"]
    assert reporting.get("/submissions/nope/explain", headers={"X-API-Key": API_KEY}).status_code == 400
    waiting = submit("zed", model(5))
    pending = reporting.get("/submissions/%s/explain" % waiting, headers={"X-API-Key": API_KEY})
    assert pending.status_code == 409
    assert "not been judged yet" in pending.get_json()["error"]


def test_a_key_in_the_url_is_refused_and_not_echoed(reporting, judged):
    for name in ("api_key", "key", "API_KEY"):
        response = reporting.get("/submissions/%s/explain?%s=%s" % (judged["alice"], name, API_KEY))
        assert response.status_code == 400
        assert API_KEY not in response.get_data(as_text=True)
        page = reporting.get("/submissions/%s/report?%s=%s" % (judged["alice"], name, API_KEY), headers=basic(API_KEY))
        assert page.status_code == 400 and API_KEY not in page.get_data(as_text=True)


# -- /report --------------------------------------------------------------------------------
def svgs(page):
    """Every inline <svg> element of the page, parsed as XML (so each is well-formed)."""
    found = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    return [ElementTree.fromstring(svg) for svg in found]


def test_report_page_has_sentences_tables_and_three_plots(reporting, judged):
    response = reporting.get("/submissions/%s/report" % judged["copier"], headers=basic(API_KEY))
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    plots = svgs(page)
    assert len(plots) == 3
    for plot in plots:
        paths = [e for e in plot.iter() if e.tag.endswith("path") and e.get("d")]
        assert len(paths) > 5
    assert page.count('<figure id="plot-') == 3
    assert "alice" in page and judged["alice"] in page
    assert "not original: its predictions" in page
    assert "Left out of the comparison (1)" in page and judged["mallory"] in page


def test_report_escapes_what_comes_from_documents(reporting, judged):
    page = reporting.get("/submissions/%s/report" % judged["copier"], headers={"X-API-Key": API_KEY}).get_data(as_text=True)
    assert "<script" not in page
    assert "&lt;script&gt;alert(" in page
    svgs(page)  # still well-formed XML with the name in a legend or table


def test_report_loads_nothing_from_elsewhere(reporting, judged):
    page = reporting.get("/submissions/%s/report" % judged["alice"], headers=basic(API_KEY)).get_data(as_text=True)
    links = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert links and all(link.startswith(("#", "/submissions/")) or link == "data:," for link in links), links
    assert re.findall(r"<link\b[^>]*>", page) == ['<link rel="icon" href="data:,">']  # no favicon request
    assert "<img" not in page and "@import" not in page
    assert not re.findall(r"url\((?!#)", page)  # only the plots' own clip paths


def test_report_asks_the_browser_for_the_key(reporting, judged):
    for headers in ({}, basic("wrong"), {"X-API-Key": "wrong"}, {"Authorization": "Bearer " + API_KEY}):
        response = reporting.get("/submissions/%s/report" % judged["alice"], headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="submission-criteria"'
        assert response.mimetype == "text/html"


def test_report_of_unknown_and_unjudged_submissions(reporting, judged, submit, model):
    missing = reporting.get("/submissions/%s/report" % ("0" * 24), headers=basic(API_KEY))
    assert missing.status_code == 404 and "no submission" in missing.get_data(as_text=True)
    assert "WWW-Authenticate" not in missing.headers
    waiting = submit("zed", model(5))
    assert reporting.get("/submissions/%s/report" % waiting, headers=basic(API_KEY)).status_code == 409


def test_report_of_a_failed_submission_explains_the_failure(reporting, store, pipeline, rounds, rules, metrics, judged):
    stages = make_stages(pipeline, store, rounds, rules, metrics, Board(), RoundMembers(store))
    queue(store, pipeline, judged["mallory"])
    assert [outcome for *_, outcome in drain(pipeline, stages)] == ["failed"]
    page = reporting.get("/submissions/%s/report" % judged["mallory"], headers=basic(API_KEY))
    assert page.status_code == 200
    assert "originality could not be judged: the submission file has a header but no predictions" in page.get_data(as_text=True)
    assert not svgs(page.get_data(as_text=True))


def test_report_without_prediction_files_leaves_out_only_that_plot(app, judged, files, store):
    client = app.test_client()  # the conftest app: no rounds given
    page = client.get("/submissions/%s/report" % judged["copier"], headers=basic(API_KEY)).get_data(as_text=True)
    assert len(svgs(page)) == 2
    assert "No distribution plot: this server has no access to the prediction files." in page


def test_report_when_a_file_is_gone(reporting, judged, files, store, tmp_path):
    doc = store.get(judged["alice"])
    (tmp_path / "files" / "uploads" / "alice" / doc["filename"]).unlink()
    page = reporting.get("/submissions/%s/report" % judged["copier"], headers=basic(API_KEY)).get_data(as_text=True)
    assert len(svgs(page)) == 2
    assert "No distribution plot: the predictions could not be read: the submission file" in page


# -- the drawing itself ---------------------------------------------------------------------
def test_ks_gap_is_where_the_statistic_is():
    rng = np.random.default_rng(3)
    for a, b in ((rng.beta(2, 2, 500), rng.beta(2, 3, 500)), (np.round(rng.random(300), 1), np.round(rng.random(300), 1))):
        x, fa, fb = ks_gap(np.sort(a), np.sort(b))
        assert abs(fa - fb) == pytest.approx(ks_statistic(np.sort(a), np.sort(b)), abs=1e-12)
        assert fa == np.mean(a <= x) and fb == np.mean(b <= x)


def test_cdf_svg_is_compact_and_ids_differ_between_plots():
    rng = np.random.default_rng(4)
    candidate = rng.random(45000)
    entry = {"username": "bob", "submission_id": "58d2c1e57278611200ee4902", "ks": 0.01}
    first = str(to_svg(cdf_figure(candidate, [(entry, rng.random(45000))]), "one"))
    second = str(to_svg(cdf_figure(candidate, [(entry, rng.random(45000))]), "two"))
    assert len(first) < 60 * 2 * 2 * CDF_POINTS  # ~2 x CDF_POINTS step vertices per curve, not 2 x 45,000
    ids = [set(re.findall(r'\sid="([^"]+)"', svg)) for svg in (first, second)]
    assert ids[0] and not ids[0] & ids[1]
    for svg, known in zip((first, second), ids):
        references = set(re.findall(r"url\(#([^)]+)\)", svg)) | set(re.findall(r'href="#([^"]+)"', svg))
        assert references and references <= known  # every reference still finds its element


def test_reports_without_store_or_rounds_render_errors():
    page = Reports(None, None).error(404, "no submission with id <b>")
    assert "no submission with id &lt;b&gt;" in page


@pytest.mark.parametrize("authorization", ["Basic", "Basic !!!not-base64!!!", "Basic " + base64.b64encode(b"no-colon").decode(),
                                           "Basic " + base64.b64encode(b"user:\xff\xfe").decode(), "Digest username=x",
                                           "Basic " + base64.b64encode(b":" + API_KEY.encode() + b"x").decode()])
def test_malformed_or_wrong_authorization_is_a_401_not_an_error(reporting, judged, authorization):
    for route in ("report", "explain"):
        response = reporting.get("/submissions/%s/%s" % (judged["alice"], route), headers={"Authorization": authorization})
        assert response.status_code == 401, (route, authorization)
