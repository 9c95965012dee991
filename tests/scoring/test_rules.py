"""scoring.rules: defaults are the tournament's rules; RULE_<FIELD> variables override them."""
import dataclasses
import math

import pytest

from scoring import rules as rules_module
from scoring.rules import Rules

FIELDS = {f.name: f for f in dataclasses.fields(Rules)}


def test_defaults_are_the_named_constants():
    defaults = Rules()
    for name in FIELDS:
        assert getattr(defaults, name) == getattr(rules_module, name.upper()), name
    assert defaults.consistency_benchmark == math.log(2)
    assert (defaults.concordance_clusters, defaults.concordance_seed) == (5, 1337)
    assert defaults.concordance_threshold == 0.12
    assert (defaults.correlation_limit, defaults.duplicate_ks, defaults.similar_ks, defaults.max_similar) == (
        0.95, 0.005, 0.03, 1)


def test_rules_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Rules().max_similar = 2


def test_empty_environment_gives_defaults():
    assert Rules.from_env({}) == Rules()


@pytest.mark.parametrize("name,text,expected", [
    ("max_similar", "2", 2),
    ("max_similar", " 3 ", 3),
    ("concordance_clusters", "7", 7),
    ("concordance_seed", "42", 42),
    ("concordance_threshold", "0.2", 0.2),
    ("correlation_limit", "1", 1.0),
    ("similar_ks", "3e-2", 0.03),
    ("duplicate_ks", "0.001", 0.001),
    ("consistency_benchmark", "0.69", 0.69),
    ("logloss_epsilon", "1e-7", 1e-7),
])
def test_override_has_the_field_type(name, text, expected):
    rules = Rules.from_env({"RULE_" + name.upper(): text})
    value = getattr(rules, name)
    assert value == expected
    assert type(value) is type(FIELDS[name].default)
    # every other field keeps its default
    for other in FIELDS:
        if other != name:
            assert getattr(rules, other) == getattr(Rules(), other)


def test_every_field_can_be_overridden_at_once():
    environ = {}
    expected = {}
    for name, field in FIELDS.items():
        value = field.default * 2 + 1 if isinstance(field.default, int) else field.default / 3
        environ["RULE_" + name.upper()] = repr(value)
        expected[name] = value
    rules = Rules.from_env(environ)
    assert dataclasses.asdict(rules) == expected


def test_unrelated_variables_are_ignored():
    environ = {
        "PATH": "/usr/bin",
        "MAX_SIMILAR": "9",
        "rule_max_similar": "9",            # variable names are case-sensitive
        "RULE_MAX_SIMILAR_EXTRA": "9",
        "RULES_MAX_SIMILAR": "9",
        "RULE_": "9",
        "RULE_UNKNOWN": "not even a number",
    }
    assert Rules.from_env(environ) == Rules()


@pytest.mark.parametrize("name,text", [
    ("max_similar", "two"),
    ("max_similar", "2.0"),
    ("concordance_clusters", "5.5"),
    ("concordance_threshold", "0,12"),
    ("similar_ks", ""),
    ("correlation_limit", "95%"),
])
def test_unparsable_value_names_the_variable(name, text):
    variable = "RULE_" + name.upper()
    with pytest.raises(ValueError) as info:
        Rules.from_env({variable: text, "RULE_MAX_SIMILAR_OK": "1"})
    message = str(info.value)
    assert variable in message
    assert repr(text) in message
    assert type(FIELDS[name].default).__name__ in message


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("RULE_MAX_SIMILAR", "4")
    monkeypatch.setenv("RULE_SIMILAR_KS", "0.02")
    monkeypatch.delenv("RULE_CONCORDANCE_THRESHOLD", raising=False)
    rules = Rules.from_env()
    assert (rules.max_similar, rules.similar_ks) == (4, 0.02)
    assert rules.concordance_threshold == Rules().concordance_threshold


def test_os_environ_error_names_the_variable(monkeypatch):
    monkeypatch.setenv("RULE_CONCORDANCE_SEED", "x")
    with pytest.raises(ValueError, match="RULE_CONCORDANCE_SEED"):
        Rules.from_env()


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1"])
def test_non_finite_or_negative_thresholds_are_refused(value):
    with pytest.raises(ValueError, match="RULE_SIMILAR_KS"):
        Rules.from_env({"RULE_SIMILAR_KS": value})
