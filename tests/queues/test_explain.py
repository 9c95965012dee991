"""Sentences from stored evidence: what a support person reads about each check."""
import datetime

import numpy as np
import pytest
from bson import ObjectId

from queues import explain
from queues.http.answers import public
from scoring import concordance, consistency, evidence
from scoring.rules import Rules

N = 1000
ALICE, BOB, CAROL = "58d2c1e57278611200ee4901", "58d2c1e57278611200ee4902", "58d2c1e57278611200ee4903"


def moved(base, count, seed=0):
    """A permutation of ``base`` with KS count exactly ``count`` against it."""
    rng = np.random.default_rng(seed)
    out = np.sort(base).copy()
    out[:count] += 10.0
    return rng.permutation(out)


@pytest.fixture
def base():
    return np.random.default_rng(1).permutation(np.arange(N) / N * 0.7 + 0.1)


def originality_doc(candidate, others, rules=Rules(), left_out=()):
    """A judged document whose originality evidence is computed from ``others`` {(id, user): values}."""
    found = evidence.originality_evidence(candidate, [(sid, values) for (sid, _), values in others.items()], rules)
    named = explain.named_originality(found, [{"submission_id": sid, "username": user} for sid, user in others],
                                      list(left_out))
    return {"_id": ObjectId(CAROL), "username": "carol", "processing": {"state": "done"},
            "original": {"pending": False, "value": found["original"]}, "evidence": {"originality": named}}


def test_duplicate(base):
    doc = originality_doc(base, {(BOB, "bob"): moved(base, 2), (ALICE, "alice"): moved(base, 300)})
    assert explain.sentence(doc, "originality") == (
        "not original: its predictions have the same distribution as bob's submission %s (KS 0.002 < 0.005)" % BOB)


def test_too_correlated_and_duplicate_and_more(base):
    doc = originality_doc(base, {(BOB, "bob"): base.copy(), (ALICE, "alice"): moved(base, 1)})
    assert explain.sentence(doc, "originality") == (
        "not original: its predictions have the same distribution as, and are too correlated with, bob's submission %s "
        "(KS 0 < 0.005, |correlation| 1 > 0.95); 1 more submission counted against it" % BOB)


def test_too_correlated_only(base):
    doc = originality_doc(base, {(ALICE, "alice"): 0.5 * base + 0.2})  # affine: different distribution
    assert explain.sentence(doc, "originality") == (
        "not original: its predictions are too correlated with alice's submission %s (|correlation| 1 > 0.95)" % ALICE)


def test_similar_reaching_the_limit(base):
    others = {(BOB, "bob"): moved(base, 20), (ALICE, "alice"): moved(base, 25, seed=3)}
    doc = originality_doc(base, others, Rules(max_similar=2))
    assert explain.sentence(doc, "originality") == (
        "not original: its predictions have a distribution similar to 2 other submissions (KS <= 0.03, 2 make it "
        "not original): bob's submission %s (KS 0.02), alice's submission %s (KS 0.025)" % (BOB, ALICE))


def test_original_names_the_closest(base):
    related = np.round(0.5 * base + 0.2 + np.random.default_rng(4).normal(0, 0.05, N), 4)  # |r| about 0.9
    others = {(BOB, "bob"): moved(base, 20), (ALICE, "alice"): related}
    doc = originality_doc(base, others, Rules(max_similar=2), left_out=[
        {"submission_id": "58d2c1e57278611200ee4999", "username": "mallory", "reason": "empty file"}])
    r = doc["evidence"]["originality"]["closest_by_correlation"][0]["correlation"]
    assert 0.8 < r < 0.95
    assert explain.sentence(doc, "originality") == (
        "original: compared with 2 other submissions; closest distribution bob's submission %s (KS 0.02, duplicate "
        "below 0.005, similar at or below 0.03); strongest correlation alice's submission %s (|correlation| %s <= 0.95); "
        "1 submission similar, 2 would make it not original; 1 earlier submission left out (missing or unreadable files)"
        % (BOB, ALICE, explain.number(r)))


def test_nothing_to_compare_with(base):
    doc = originality_doc(base, {})
    assert explain.sentence(doc, "originality") == "original: no earlier submission from another user to compare with"


def test_numbers_get_digits_near_a_threshold():
    assert explain.against(0.0021, 0.005) == ("0.0021", "0.005")
    assert explain.against(0.0049999, 0.005) == ("0.0049999", "0.005")
    assert explain.against(0.12000000000000001, 0.12) == ("0.12000000000000001", "0.12")
    assert explain.relation(0.03, 0.03, strict_below=False) == "0.03 <= 0.03"
    assert explain.relation(0.005, 0.005, strict_below=True) == "0.005 >= 0.005"
    assert explain.number(0.9999994735376581) == "0.999999"  # not "1": that would claim an exact copy
    assert explain.number(1.0) == "1" and explain.number(0.0) == "0" and explain.number(-0.99999999) == "-0.99999999"
    assert explain.number(1.0000000000000002) == "1"  # float noise of an exact affine copy
    assert explain.number(0.00049999) == "0.0005"  # not whole: 4 digits are honest enough


def concordance_doc(rules=Rules()):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 600)
    types = rng.choice(["validation", "test", "live"], 600)
    predictions = rng.beta(2, 2, 600) + np.where(types == "live", 0.2, 0.0)
    found = concordance.concordance_evidence(concordance.cluster_groups(labels, types), predictions, rules)
    return {"_id": ObjectId(CAROL), "processing": {"state": "done"},
            "concordant": {"pending": False, "value": found["concordant"]}, "evidence": {"concordance": found}}


def test_concordance_sentences():
    doc = concordance_doc()
    found = doc["evidence"]["concordance"]
    worst = max(found["clusters"], key=lambda c: c["max"])
    pair = max(worst["ks"], key=lambda name: worst["ks"][name])
    assert doc["concordant"]["value"] is False
    assert explain.sentence(doc, "concordance") == (
        "not concordant: mean per-cluster KS %s >= 0.12; worst is cluster %d, KS %s between %s and %s predictions"
        % (explain.number(found["mean"]), worst["cluster"], explain.number(worst["max"]), *pair.split("-")))
    loose = concordance_doc(Rules(concordance_threshold=0.9))
    assert explain.sentence(loose, "concordance") == "concordant: mean per-cluster KS %s < 0.9" % explain.number(
        loose["evidence"]["concordance"]["mean"])


def test_consistency_sentence():
    rng = np.random.default_rng(3)
    eras = np.repeat(["era%d" % i for i in range(12)], 40)
    targets = rng.integers(0, 2, eras.size)
    probabilities = np.clip(0.5 + (targets - 0.5) * rng.normal(0.0, 0.1, eras.size), 0.01, 0.99)
    found = consistency.consistency_evidence(eras, targets, probabilities)
    doc = {"_id": ObjectId(CAROL), "consistency": found["consistency"], "evidence": {"consistency": found}}
    assert explain.sentence(doc, "consistency") == (
        "consistency %s%%: %d of 12 validation eras beat the benchmark 0.6931 (logloss below it)"
        % (explain.number(found["consistency"]), found["better"]))
    assert 0 < found["better"] < 12


def test_pending_failed_and_stale_checks(base):
    doc = originality_doc(base, {(BOB, "bob"): moved(base, 2)})
    doc["processing"] = {"state": "scoring"}
    assert explain.sentence(doc, "concordance") == "concordance: not judged yet (status scoring)"
    assert explain.sentence(doc, "consistency") == "consistency: not judged yet (status scoring)"
    assert explain.judged_at_all(doc)
    doc["original"] = {"pending": False, "value": None, "error": "the submission file is empty"}
    assert explain.sentence(doc, "originality") == "originality could not be judged: the submission file is empty"
    assert explain.current_evidence(doc, "originality") is None
    doc["original"] = {"pending": False, "value": True}  # the evidence says False: it is not this verdict's
    assert explain.sentence(doc, "originality") == "original (judged before evidence was recorded)"
    queued = {"_id": ObjectId(ALICE), "processing": {"state": "queued"}}
    assert not explain.judged_at_all(queued)
    failed = {"_id": ObjectId(ALICE), "processing": {"state": "failed", "error": "round 9 has no dataset"},
              "concordant": {"pending": True}}
    assert explain.sentence(failed, "concordance") == "concordance could not be judged: round 9 has no dataset"


def test_explanation_body(base):
    doc = originality_doc(base, {(BOB, "bob"): moved(base, 2)})
    doc["provenance"] = {"scorer_version": "1.1.0", "judged_at": {"originality": datetime.datetime(2017, 3, 23, 10, 5)}}
    body = explain.explanation(doc, public)
    assert body["submission_id"] == CAROL and body["status"] == "done"
    assert body["verdicts"] == {"consistency": None, "concordance": None, "originality": {"pending": False, "value": False}}
    assert body["evidence"]["originality"] == doc["evidence"]["originality"]
    assert body["evidence"]["concordance"] is None
    assert body["provenance"]["judged_at"]["originality"] == "2017-03-23T10:05:00Z"
    assert body["sentences"]["originality"].startswith("not original: its predictions have the same distribution as bob's")
