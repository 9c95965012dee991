"""Reading a judged submission: its evidence in sentences a person can follow.

The evidence is written with each verdict (see :mod:`scoring.evidence`
and :mod:`queues.provenance`); this module only reads documents, so the
sentences say exactly what the stored numbers say. Evidence is used only
while it still matches the verdict beside it: a check that later failed,
or a document judged before evidence was recorded, is described as such.
"""
from queues.notify import delivery_states
from scoring.evidence import CORRELATED, DUPLICATE, OFFENDER_CAP, SIMILAR

CHECKS = ("consistency", "concordance", "originality")
#: Verdict field of each check in the submission document; its evidence holds the same verdict under the same key.
VERDICT_FIELD = {"consistency": "consistency", "concordance": "concordant", "originality": "original"}
#: Significant digits shown by default; more are used near a threshold.
DIGITS = 4


# -- the worker's side: evidence with names --------------------------------------
def named_originality(found, others, left_out):
    """Originality evidence as stored: submission ids and usernames, and who was left out.

    ``others`` are the compared submissions (``submission_id``,
    ``username``); ``left_out`` the ones whose files could not be read, or
    whose documents had a field the service cannot use (``submission_id``,
    ``username``, ``reason``, and ``field`` for those), capped like the
    other lists.
    """
    usernames = {other["submission_id"]: other["username"] for other in others}

    def entries(listed):
        return [{"submission_id": entry["key"], "username": usernames.get(entry["key"]),
                 **{k: v for k, v in entry.items() if k != "key"}} for entry in listed]

    named = dict(found)
    for field in ("counted_against", "closest_by_ks", "closest_by_correlation"):
        named[field] = entries(found[field])
    named["left_out"] = list(left_out[:OFFENDER_CAP])
    named["left_out_total"] = len(left_out)
    return named


# -- numbers -----------------------------------------------------------------------
def number(value, digits=DIGITS):
    """A float with ``digits`` significant digits, without trailing zeros.

    More digits are used when rounding would make it look whole: a
    correlation of 0.9999995 printed as "1" would claim an exact copy
    (float noise of 1e-12 or less still prints as the whole number).
    """
    shown = "%.*g" % (digits, value)
    while float(shown).is_integer() and abs(float(shown) - value) > 1e-12 * max(1.0, abs(value)) and digits < 17:
        digits += 1
        shown = "%.*g" % (digits, value)
    return shown


def against(value, threshold):
    """``(value, threshold)`` as text, with enough digits that the printed numbers
    compare the way the exact ones do (never "0.005 < 0.005")."""
    def side(a, b):
        return (a > b) - (a < b)

    truth = side(value, threshold)
    for digits in range(DIGITS, 18):
        shown = number(value, digits), number(threshold, digits)
        if side(float(shown[0]), float(shown[1])) == truth:
            return shown
    return repr(value), repr(threshold)


def relation(value, threshold, strict_below):
    """``"a < b"``, ``"a <= b"``, ``"a >= b"`` or ``"a > b"``: how value stands to threshold.

    ``strict_below`` says whether the rule's test is ``value < threshold``
    (else ``value <= threshold``), so the printed sign is the rule's.
    """
    shown_value, shown_threshold = against(value, threshold)
    if strict_below:
        sign = "<" if value < threshold else ">="
    else:
        sign = "<=" if value <= threshold else ">"
    return "%s %s %s" % (shown_value, sign, shown_threshold)


def whose(entry):
    """``bob's submission 58d2…`` for an evidence entry (usernames may be missing)."""
    owner = "%s's submission" % entry["username"] if entry.get("username") else "submission"
    return "%s %s" % (owner, entry["submission_id"])


def plural(count, word):
    """``1 submission``, ``2 submissions``."""
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


# -- which evidence still stands ---------------------------------------------------------
def verdict_of(doc, check):
    """``(state, value, error)`` of a check: state is judged, pending or failed."""
    if check == "consistency":
        value = doc.get("consistency")
        return ("pending", None, None) if value is None else ("judged", value, None)
    verdict = doc.get(VERDICT_FIELD[check])
    if not isinstance(verdict, dict) or verdict.get("pending", True):
        return "pending", None, None
    if verdict.get("error") is not None or verdict.get("value") is None:
        return "failed", None, verdict.get("error") or "no verdict was recorded"
    return "judged", bool(verdict["value"]), None


def current_evidence(doc, check):
    """The check's stored evidence when it belongs to the verdict now in the document, else None."""
    state, value, _ = verdict_of(doc, check)
    found = ((doc.get("evidence") or {}).get(check))
    if state != "judged" or not isinstance(found, dict):
        return None
    return found if found.get(VERDICT_FIELD[check]) == value else None


# -- sentences -----------------------------------------------------------------------
def consistency_sentence(value, found):
    """How many eras beat the benchmark; ``found`` None for documents judged before evidence."""
    if found is None:
        return "consistency %s%% (judged before evidence was recorded)" % number(value)
    return "consistency %s%%: %d of %d validation eras beat the benchmark %s (logloss below it)" % (
        number(found["consistency"]), found["better"], found["eras"], number(found["benchmark"]))


def concordance_sentence(value, found):
    """The mean against the threshold, and the worst cluster when it failed."""
    if found is None:
        return "%s (judged before evidence was recorded)" % ("concordant" if value else "not concordant")
    text = "%s: mean per-cluster KS %s" % ("concordant" if value else "not concordant",
                                           relation(found["mean"], found["threshold"], strict_below=True))
    if not value:
        worst = max((c for c in found["clusters"] if c["max"] is not None), key=lambda c: c["max"])
        pair = max((name for name, ks in worst["ks"].items() if ks is not None), key=lambda name: worst["ks"][name])
        text += "; worst is cluster %d, KS %s between %s and %s predictions" % (
            worst["cluster"], number(worst["max"]), *pair.split("-"))
    return text


def offender_reason(entry, thresholds):
    """Why one submission counted against the candidate, with its numbers."""
    parts = []
    if DUPLICATE in entry["clauses"]:
        parts.append(("have the same distribution as", "KS " + relation(entry["ks"], thresholds["duplicate_ks"], True)))
    elif SIMILAR in entry["clauses"]:
        parts.append(("have a distribution similar to", "KS " + relation(entry["ks"], thresholds["similar_ks"], False)))
    if CORRELATED in entry["clauses"]:
        shown = "|correlation| %s" % (relation(abs(entry["correlation"]), thresholds["correlation_limit"], False)
                                      if entry["correlation"] is not None else "above the limit")
        parts.append(("are too correlated with", shown))
    verbs = parts[0][0] if len(parts) == 1 else "%s, and %s," % (parts[0][0], parts[1][0])
    return "its predictions %s %s (%s)" % (verbs, whose(entry), ", ".join(numbers for _, numbers in parts))


def left_out_causes(found):
    """Why submissions were left out, in a few words: unreadable files, unusable document fields, or both."""
    listed = found.get("left_out") or []
    fields = any(entry.get("field") for entry in listed)
    files = any(not entry.get("field") for entry in listed) or len(listed) < found.get("left_out_total", 0)
    return " and ".join(cause for cause, there in (("missing or unreadable files", files),
                                                   ("unusable document fields", fields)) if there)


def originality_sentence(value, found):
    """The submission that decided it, or when original the closest ones, with their numbers."""
    if found is None:
        return "%s (judged before evidence was recorded)" % ("original" if value else "not original")
    thresholds = found["thresholds"]
    left_out = found.get("left_out_total", 0)
    noun = "submission" if any(entry.get("field") for entry in found.get("left_out") or []) else "earlier submission"
    tail = "; %s left out (%s)" % (plural(left_out, noun), left_out_causes(found)) if left_out else ""
    if found["compared"] == 0:
        return "original: no earlier submission from another user to compare with" + tail
    if not value:
        listed = found["counted_against"]
        if found["decisive_total"]:
            text = "not original: " + offender_reason(listed[0], thresholds)
            others = found["counted_against_total"] - 1
        else:
            allowed = max(thresholds["max_similar"], 1)
            text = "not original: its predictions have a distribution similar to %s (KS <= %s, %d make it not original): %s" % (
                plural(found["similar_total"], "other submission"), number(thresholds["similar_ks"]), allowed,
                ", ".join("%s (KS %s)" % (whose(e), number(e["ks"])) for e in listed[:3]))
            others = found["similar_total"] - min(len(listed), 3)
        if others > 0:
            text += "; %s counted against it" % plural(others, "more submission")
        return text + tail
    text = "original: compared with %s" % plural(found["compared"], "other submission")
    if found["closest_by_ks"]:
        near = found["closest_by_ks"][0]
        text += "; closest distribution %s (KS %s, duplicate below %s, similar at or below %s)" % (
            whose(near), number(near["ks"]), number(thresholds["duplicate_ks"]), number(thresholds["similar_ks"]))
    if found["closest_by_correlation"]:
        near = found["closest_by_correlation"][0]
        text += "; strongest correlation %s (|correlation| %s)" % (
            whose(near), relation(abs(near["correlation"]), thresholds["correlation_limit"], False))
    if found["similar_total"]:
        text += "; %s similar, %d would make it not original" % (
            plural(found["similar_total"], "submission"), max(thresholds["max_similar"], 1))
    return text + tail


SENTENCE = {"consistency": consistency_sentence, "concordance": concordance_sentence,
            "originality": originality_sentence}


def sentence(doc, check):
    """One sentence for one check of a submission document."""
    state, value, error = verdict_of(doc, check)
    if state == "failed":
        return "%s could not be judged: %s" % (check, error)
    if state == "pending":
        status = (doc.get("processing") or {}).get("state")
        if status == "failed" and (doc.get("processing") or {}).get("error"):
            return "%s could not be judged: %s" % (check, doc["processing"]["error"])
        return "%s: not judged yet (status %s)" % (check, status or "never submitted for judging")
    return SENTENCE[check](value, current_evidence(doc, check))


def sentences(doc):
    """``{check: sentence}`` for the three checks."""
    return {check: sentence(doc, check) for check in CHECKS}


def judged_at_all(doc):
    """Whether any check has a verdict (or a failure) to explain."""
    return any(verdict_of(doc, check)[0] != "pending" for check in CHECKS)


def explanation(doc, public):
    """The ``/explain`` answer: verdicts, sentences, current evidence and provenance, and how each
    webhook event about the submission was delivered.

    ``public`` makes document values JSON-friendly (ObjectIds, datetimes).
    """
    processing = doc.get("processing") or {}
    return {
        "submission_id": str(doc["_id"]),
        "username": doc.get("username"),
        "competition_id": doc.get("competition_id"),
        "status": processing.get("state"),
        "verdicts": {check: public(doc.get(VERDICT_FIELD[check])) for check in CHECKS},
        "sentences": sentences(doc),
        "evidence": {check: current_evidence(doc, check) for check in CHECKS},
        "provenance": public(doc.get("provenance")),
        "history": [public(earlier_judgement(entry)) for entry in doc.get("history") or []],
        "notifications": [public(state) for state in delivery_states(doc)],  # each webhook event's delivery
    }


def earlier_judgement(entry):
    """A judgement a re-score replaced, as /explain lists it: the verdicts and what produced them."""
    provenance = entry.get("provenance") or {}
    return {"rescore_run": entry.get("run"), "replaced_at": entry.get("replaced_at"), "status": entry.get("state"),
            "error": entry.get("error"), "consistency": entry.get("consistency"),
            "verdicts": {check: entry.get(VERDICT_FIELD[check]) for check in CHECKS if check != "consistency"},
            "rules": provenance.get("rules"), "dataset_version": provenance.get("dataset_version"),
            "scorer_version": provenance.get("scorer_version"), "judged_at": provenance.get("judged_at")}
