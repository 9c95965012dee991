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
        "RULES_MAX_SIMILAR": "9",
    }
    assert Rules.from_env(environ) == Rules()


@pytest.mark.parametrize("variable, suggested", [
    ("RULE_CORELATION_LIMIT", "RULE_CORRELATION_LIMIT"),
    ("RULE_MAX_SIMILAR_EXTRA", "RULE_MAX_SIMILAR"),
    ("RULE_CONCORDANCE_TRESHOLD", "RULE_CONCORDANCE_THRESHOLD"),
    ("RULE_SIMILAR_KS_", "RULE_SIMILAR_KS"),
])
def test_a_misspelt_rule_is_refused_naming_the_closest(variable, suggested):
    """A typo of a threshold used to be ignored: the rule kept its default and nobody was told."""
    with pytest.raises(rules_module.RuleSettingsError) as info:
        Rules.from_env({variable: "0.5"})
    assert str(info.value).startswith("%s is not a rule setting; did you mean %s" % (variable, suggested))
    assert info.value.problems == [(variable, str(info.value))]


@pytest.mark.parametrize("variable", ["RULE_", "RULE_UNKNOWN"])
def test_a_rule_name_like_no_other_lists_them_all(variable):
    with pytest.raises(ValueError) as info:
        Rules.from_env({variable: "not even a number"})
    assert variable in str(info.value) and all("RULE_" + name.upper() in str(info.value) for name in FIELDS)


@pytest.mark.parametrize("name, text, range_text", [
    ("correlation_limit", "7", "from 0 to 1"),
    ("correlation_limit", "-0.1", "from 0 to 1"),
    ("duplicate_ks", "1.5", "from 0 to 1"),
    ("similar_ks", "3", "from 0 to 1"),
    ("concordance_threshold", "0", "greater than 0 and at most 1"),
    ("concordance_threshold", "12", "greater than 0 and at most 1"),
    ("consistency_benchmark", "0.7", "greater than 0 and at most 0.6931471805599453"),
    ("consistency_benchmark", "0", "greater than 0"),
    ("logloss_epsilon", "0", "greater than 0 and below 0.5"),
    ("logloss_epsilon", "0.5", "greater than 0 and below 0.5"),
    ("concordance_clusters", "0", "from 1 to 100"),
    ("concordance_clusters", "101", "from 1 to 100"),
    ("concordance_seed", "4294967296", "from 0 to 4294967295"),
    ("max_similar", "0", "at least 1"),
])
def test_a_value_outside_the_rules_range_is_refused_naming_the_range(name, text, range_text):
    variable = "RULE_" + name.upper()
    with pytest.raises(ValueError) as info:
        Rules.from_env({variable: text})
    message = str(info.value)
    assert message.startswith("%s=%r must be" % (variable, text)) and range_text in message, message
    assert "default" in message and ":" in message  # the default, and why the range is what it is


@pytest.mark.parametrize("name, text", [("correlation_limit", "0"), ("correlation_limit", "1"), ("duplicate_ks", "0"),
                                        ("similar_ks", "1"), ("concordance_threshold", "1"),
                                        ("consistency_benchmark", repr(math.log(2))), ("concordance_clusters", "1"),
                                        ("concordance_clusters", "100"), ("concordance_seed", "0"),
                                        ("max_similar", "1000")])
def test_the_ends_of_each_range_are_accepted_where_the_rule_allows_them(name, text):
    assert getattr(Rules.from_env({"RULE_" + name.upper(): text}), name) == type(FIELDS[name].default)(text)


def test_every_rule_has_a_range_its_default_is_in():
    assert set(rules_module.LIMITS) == set(FIELDS)
    for name, field in FIELDS.items():
        assert rules_module.LIMITS[name].allows(field.default), name


def test_every_wrong_setting_is_listed_at_once_in_name_order():
    with pytest.raises(rules_module.RuleSettingsError) as info:
        Rules.from_env({"RULE_SIMILAR_KS": "2", "RULE_CORELATION_LIMIT": "0.9", "RULE_MAX_SIMILAR": "1",
                        "RULE_CONCORDANCE_CLUSTERS": "x"})
    assert [variable for variable, _ in info.value.problems] == [
        "RULE_CONCORDANCE_CLUSTERS", "RULE_CORELATION_LIMIT", "RULE_SIMILAR_KS"]


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
        Rules.from_env({variable: text, "RULE_DUPLICATE_KS": "0.005"})  # a valid neighbour changes nothing
    message = str(info.value)
    assert variable in message
    assert repr(text) in message
    assert ("a whole number" if isinstance(FIELDS[name].default, int) else "a number") in message


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
