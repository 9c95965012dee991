"""The README and docs/: every link leads somewhere, and what they state about the code is the code's.

Links are checked the way GitHub renders them: a relative path must name a file of the
repository, and an ``#anchor`` a heading of the page it points to.
"""
import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from queues.config import LOCAL_API_KEY, ORDER
from scoring.rules import LIMITS, Rules, _number

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text):
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path):
    """The anchors GitHub makes for a page's headings: lower case, punctuation dropped, spaces as '-'."""
    seen, found = {}, set()
    for heading in re.findall(r"(?m)^#{1,6}\s+(.*?)\s*#*$", re.sub(r"(?ms)^```.*?^```", "", path.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else "%s-%d" % (slug, count))
    return found


def links(path):
    """Every (target, line) a page links to, outside code."""
    for number, line in enumerate(prose(path.read_text()).splitlines(), 1):
        for target in LINK.findall(line):
            yield target, number


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target, number in links(page):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check here
            continue
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists() or REPO not in destination.parents and destination != REPO:
            broken.append("%s (line %d): no file %s" % (target, number, file_part))
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append("%s (line %d): %s has no heading #%s" % (target, number, file_part or page.name, anchor))
    assert not broken, "%s: %s" % (page.relative_to(REPO), "; ".join(broken))


def test_the_link_checker_sees_links_and_anchors():
    """The checker itself: it finds links outside code only, and makes GitHub's anchors."""
    page = REPO / "docs" / "design.md"
    assert {"how-it-works", "the-rules", "data-layout-the-contract-with-the-tournament-backend"} <= anchors(page)
    sample = "see [a](x.md#y) and ![b](c.png) but not `[d](e)` nor\n```\n[f](g)\n```\n"
    assert LINK.findall(prose(sample)) == ["x.md#y", "c.png"]


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for target, _ in links(REPO / "README.md")}
    assert not [page.name for page in PAGES[1:] if page not in linked]


# -- what the pages state, against the code --------------------------------------------------
def test_the_readme_gives_the_two_commands_and_ci_runs_its_test_command():
    readme = (REPO / "README.md").read_text()
    assert "pip install -r requirements.txt && ./server --use_local" in readme
    assert "\npython -m pytest -q " in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install --quiet -r requirements.txt" in ci and ci.rstrip().endswith("python -m pytest -q")


def test_the_development_key_shown_is_the_one_local_mode_accepts():
    readme = (REPO / "README.md").read_text()
    assert LOCAL_API_KEY in readme
    for page in PAGES:
        for key in re.findall(r"[A-Za-z0-9+/]{43}=", page.read_text()):
            assert key == LOCAL_API_KEY, "%s shows a key local mode does not accept" % page.name


def test_operations_names_every_setting():
    text = (REPO / "docs" / "operations.md").read_text()
    assert not [name for name in ORDER if "`%s`" % name not in text]


def test_the_rule_settings_table_is_the_rules_ranges():
    rows = {match[0]: match[1:] for match in re.findall(r"(?m)^\| `(RULE_[A-Z_]+)` \| ([^|]+) \| ([^|]+) \|",
                                                           (REPO / "docs" / "operations.md").read_text())}
    for field in dataclasses.fields(Rules):
        default, limits = rows.pop("RULE_" + field.name.upper())
        assert default.split(" (")[0].strip() == _number(field.default), field.name
        expected = LIMITS[field.name].describe() + (" (whole)" if isinstance(field.default, int) else "")
        assert limits.strip() == expected, field.name
    assert not rows, "the table lists settings that are no rule: %s" % sorted(rows)


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def test_no_page_mentions_a_file_of_the_repository_that_is_gone():
    """Paths in backticks (`queues/store.py`, `ops/alerts.yml`) must exist: code moves, prose follows."""
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    if not tracked:
        pytest.skip("not a git checkout")
    missing = []
    for page in PAGES:
        for path in re.findall(r"`((?:queues|scoring|bench|tests|ops|docs)/[\w./-]+\.\w+)", page.read_text()):
            if path not in tracked and not (REPO / path).exists():
                missing.append("%s: %s" % (page.name, path))
    assert not missing
