"""The support page of one submission: sentences, evidence tables and plots.

Plots are drawn by matplotlib on the server (Agg canvas, written as SVG)
and put inline in the page, so the page loads nothing else. Everything
that comes from documents (usernames above all) reaches the HTML through
Jinja2's autoescaping, and reaches the plots as plain text (matplotlib
escapes it in the SVG; ``$`` is escaped so it is never read as math).

matplotlib keeps its settings in process-wide ``rcParams``, so building
and writing figures happens under one lock: a support page is rare, a
mixed-up figure would be wrong.
"""
import io
import logging
import os
import re
import threading

import jinja2
import markupsafe
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from queues.errors import PERMANENT, reason
from scoring.concordance import PAIRS, pair_name

log = logging.getLogger(__name__)

#: Points at which each CDF is drawn (quantiles of the values shown): a
#: faithful curve at screen resolution, not 45,000 vertices per line.
CDF_POINTS = 600
#: Submissions drawn against the candidate in the CDF plot.
CDF_OTHERS = 3
#: A KS gap this small is invisible at full scale: an inset shows the
#: exact ECDFs over this many distinct values either side of it.
ZOOM_BELOW = 0.1
ZOOM_POINTS = 60
SVG_SETTINGS = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10}
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
#: Headers of every page: nothing from elsewhere may load, nothing is cached.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
_FIGURES = threading.Lock()


def number(value, digits=6):
    """A table cell's number; "—" when there is none (a skipped comparison, a constant vector)."""
    return "—" if value is None else "%.*g" % (digits, value)


def plain_label(text):
    """Text for a matplotlib label: ``$`` escaped so it is never parsed as math."""
    return str(text).replace("\\", "\\\\").replace("$", r"\$")


def short(entry):
    """``bob (…ee4902)``: a legend label for an evidence entry."""
    return "%s (…%s)" % (entry.get("username") or "submission", str(entry["submission_id"])[-6:])


def scoped_ids(svg, prefix):
    """Prefix every id in an SVG, and every reference to one, with ``prefix``.

    matplotlib numbers its element ids per figure (``axes_1``...); three
    figures inline in one page must not share them. Only tags are
    rewritten, never text (which matplotlib has escaped, so holds no tag).
    """
    def tag(match):
        text = re.sub(r'(\sid=")([^"]+")', r"\g<1>%s-\g<2>" % prefix, match.group(0))
        text = re.sub(r"url\(#", "url(#%s-" % prefix, text)
        return re.sub(r'(href=")#', r"\g<1>#%s-" % prefix, text)
    return re.sub(r"<[^<>]*>", tag, svg)


def to_svg(figure, name):
    """The figure as an inline ``<svg>`` element (no XML prolog), its ids scoped by ``name``."""
    FigureCanvasAgg(figure)
    buffer = io.StringIO()
    with matplotlib.rc_context({**SVG_SETTINGS, "svg.hashsalt": name}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return markupsafe.Markup(scoped_ids(text[text.index("<svg"):], name))


def ecdf(sorted_values, points):
    """Share of values at or below each point (side='right', as the KS statistic counts)."""
    return np.searchsorted(sorted_values, points, side="right") / sorted_values.size


def ks_gap(a_sorted, b_sorted):
    """``(x, F_a(x), F_b(x))`` where the two ECDFs are farthest apart (the KS statistic's place)."""
    both = np.concatenate([a_sorted, b_sorted])
    fa, fb = ecdf(a_sorted, both), ecdf(b_sorted, both)
    at = int(np.argmax(np.abs(fa - fb)))
    return float(both[at]), float(fa[at]), float(fb[at])


def cdf_figure(candidate, others):
    """Candidate ECDF against others' (``[(entry, values)]``), each KS gap marked."""
    figure = Figure(figsize=(7.6, 3.6))
    axes = figure.add_subplot()
    mine = np.sort(candidate)
    gaps = [(entry, np.sort(values)) for entry, values in others]
    gaps = [(entry, ordered, ks_gap(mine, ordered)) for entry, ordered in gaps]
    pooled = np.concatenate([mine] + [ordered for _, ordered, _ in gaps])
    points = np.union1d(np.quantile(pooled, np.linspace(0, 1, CDF_POINTS)), [gap[0] for *_, gap in gaps])
    axes.step(points, ecdf(mine, points), where="post", color="black", linewidth=1.6, label="this submission")
    for number, (entry, ordered, (x, fa, fb)) in enumerate(gaps):
        color = "C%d" % number
        axes.step(points, ecdf(ordered, points), where="post", color=color, linewidth=1.1, label=plain_label(short(entry)))
        axes.vlines(x, min(fa, fb), max(fa, fb), color=color, linewidth=3, alpha=0.8)
        axes.plot([x, x], [fa, fb], linestyle="none", marker="_", markersize=12, color=color)
        axes.annotate("KS %.4g" % entry["ks"], (x, (fa + fb) / 2), xytext=(8, -4 - 12 * number),
                      textcoords="offset points", color=color, fontsize=8)
    axes.set_xlabel("predicted probability")
    axes.set_ylabel("share of predictions ≤ x")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("Prediction distributions (empirical CDFs); bars mark the KS gap")
    if gaps and gaps[0][0]["ks"] < ZOOM_BELOW:
        zoom(axes, mine, *gaps[0])
    return figure


def zoom(axes, mine, entry, ordered, gap):
    """An inset with both exact ECDFs around the first KS gap (upper left, where CDFs are not)."""
    x, fa, fb = gap
    values = np.union1d(mine, ordered)
    at = int(np.searchsorted(values, x))
    window = values[max(at - ZOOM_POINTS, 0): at + ZOOM_POINTS + 1]
    inset = axes.inset_axes([0.07, 0.5, 0.36, 0.4])
    inset.step(window, ecdf(mine, window), where="post", color="black", linewidth=1.2)
    inset.step(window, ecdf(ordered, window), where="post", color="C0", linewidth=1.0)
    inset.vlines(x, min(fa, fb), max(fa, fb), color="C0", linewidth=3, alpha=0.8)
    inset.set_title("zoom on the gap: KS %.4g at x = %.6g" % (entry["ks"], x), fontsize=7)
    inset.tick_params(labelsize=6)
    inset.grid(alpha=0.3)
    axes.indicate_inset_zoom(inset, edgecolor="0.5")


def concordance_figure(found):
    """KS of each comparison per cluster, their maximum, the mean and the threshold."""
    figure = Figure(figsize=(7.6, 3.4))
    axes = figure.add_subplot()
    clusters = found["clusters"]
    x = np.arange(len(clusters))
    width = 0.26
    for number, pair in enumerate(PAIRS):
        name = pair_name(pair)
        heights = [c["ks"][name] if c["ks"][name] is not None else 0.0 for c in clusters]
        axes.bar(x + (number - 1) * width, heights, width, label="%s vs %s" % pair, color="C%d" % number)
    maxima = [c["max"] if c["max"] is not None else np.nan for c in clusters]
    axes.plot(x, maxima, linestyle="none", marker="v", color="black", label="cluster maximum")
    axes.axhline(found["threshold"], color="C3", linewidth=1.5, label="threshold %.4g" % found["threshold"])
    axes.axhline(found["mean"], color="black", linestyle="--", linewidth=1, label="mean of maxima %.4g" % found["mean"])
    axes.set_xticks(x, ["cluster %d\nv %d · t %d · l %d" % (c["cluster"], c["sizes"].get("validation", 0),
                                                           c["sizes"].get("test", 0), c["sizes"].get("live", 0))
                        for c in clusters], fontsize=7)
    axes.set_ylabel("KS statistic")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=7, ncols=2)
    axes.set_title("Concordance: KS per cluster against the threshold")
    return figure


def consistency_figure(found):
    """Logloss of each validation era against the benchmark."""
    figure = Figure(figsize=(7.6, 3.2))
    axes = figure.add_subplot()
    eras = found["per_era"]
    x = np.arange(len(eras))
    losses = np.array([e["logloss"] for e in eras])
    beats = np.array([e["beats"] for e in eras], dtype=bool)
    benchmark = found["benchmark"]
    axes.vlines(x, benchmark, losses, color=np.where(beats, "C0", "C1"), linewidth=2)
    axes.plot(x[beats], losses[beats], "o", color="C0", label="beats the benchmark")
    axes.plot(x[~beats], losses[~beats], "s", color="C1", label="does not")
    axes.axhline(benchmark, color="black", linewidth=1, label="benchmark %.4f" % benchmark)
    axes.set_xticks(x, [plain_label(e["era"]) for e in eras], rotation=45 if len(eras) > 12 else 0, fontsize=7)
    axes.set_ylabel("logloss")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title("Consistency: logloss per validation era (lower is better)")
    return figure


class Reports:
    """Renders report pages; reads predictions through the service's ``rounds`` and ``store``.

    ``rounds`` may be None (no predictions at hand): the page then says
    so in place of the distribution plot.
    """

    def __init__(self, rounds, store):
        self.rounds = rounds
        self.store = store
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
        self.templates.filters["num"] = number

    def predictions(self, doc):
        """A submission's predictions in round order, read as the workers read them."""
        rnd = self.rounds.get(doc["competition_id"])
        return self.rounds.predictions(rnd, doc["username"], doc["filename"])

    def drawn_against(self, found):
        """The entries the CDF plot shows, and what they are."""
        if found["original"]:
            return found["closest_by_ks"][:1], "the submission with the closest distribution"
        return found["counted_against"][:CDF_OTHERS], "the submissions that decided it is not original"

    def distribution_data(self, doc, found):
        """``(candidate, [(entry, values)], caption, problem)`` for the originality CDF plot."""
        entries, what = self.drawn_against(found)
        if not entries:
            return None, None, None, "there was no other submission to draw"
        if self.rounds is None:
            return None, None, None, "this server has no access to the prediction files"
        try:
            candidate = self.predictions(doc)
            others = []
            for entry in entries:
                other = self.store.get(entry["submission_id"])
                if other is None:
                    return None, None, None, "submission %s no longer exists" % entry["submission_id"]
                others.append((entry, self.predictions(other)))
        except PERMANENT as exc:
            return None, None, None, "the predictions could not be read: %s" % reason(exc)
        except Exception as exc:  # storage away: the rest of the page is still worth showing
            log.warning("%s: report without the distribution plot: %s: %s", doc["_id"], type(exc).__name__, exc)
            return None, None, None, "the predictions could not be read just now (%s); reload later" % type(exc).__name__
        return candidate, others, "This submission against %s." % what, None

    def page(self, doc, body):
        """The HTML report for a document and its ``/explain`` body.

        Files are read first; only the drawing holds matplotlib's lock.
        """
        evidence = body["evidence"]
        sid = body["submission_id"]
        plots = {}
        if evidence["originality"] is not None:
            candidate, others, caption, problem = self.distribution_data(doc, evidence["originality"])
            plots["originality"] = {"caption": caption, "problem": problem, "svg": None}
        with _FIGURES:
            if evidence["originality"] is not None and problem is None:
                plots["originality"]["svg"] = to_svg(cdf_figure(candidate, others), "cdf-" + sid)
            if evidence["concordance"] is not None:
                plots["concordance"] = to_svg(concordance_figure(evidence["concordance"]), "ks-" + sid)
            if evidence["consistency"] is not None:
                plots["consistency"] = to_svg(consistency_figure(evidence["consistency"]), "eras-" + sid)
        return self.templates.get_template("report.html").render(body=body, plots=plots)

    def error(self, status, message):
        """A small page for a request that cannot be answered with a report."""
        return self.templates.get_template("error.html").render(status=status, message=message)
