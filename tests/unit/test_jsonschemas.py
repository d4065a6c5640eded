"""jsonschemas: schema patterns keep JSON Schema's (ECMA-262) meaning of `$` under Python's re."""

import pytest

from migrator.jsonschemas import ecma_pattern, errors, plan_pattern


@pytest.mark.parametrize("pattern,text,matches", [
    ("^[a-z]+$", "web", True),
    ("^[a-z]+$", "web\n", False),  # Python's own "$" would match before the newline
    ("^(/|$)[^\\s]*$", "\n", False),  # a "$" inside a group is the end too
    ("^(a|$)x$", "ax", True),
    ("^[$]$", "$", True),  # inside a class "$" is a character
    ("^[]$]+$", "$]", True),  # a leading ] is a class member for Python's re
    ("^[^]$]$", "a", True),
    ("^a\\$$", "a$", True),  # an escaped "$" is a character
])
def test_ecma_pattern(pattern, text, matches):
    assert bool(ecma_pattern(pattern).search(text)) is matches


def test_the_plan_schema_refuses_a_name_ending_in_a_newline():
    plan = {"version": 1, "vsn": {"name": "demo\n", "engine": "podman", "data_root": "/srv/demo"},
            "volumes": [], "services": []}
    assert [list(e.absolute_path) for e in errors("plan", plan)] == [["vsn", "name"]]
    plan["vsn"]["name"] = "demo"
    assert errors("plan", plan) == []


def test_name_pattern_is_the_schemas():
    assert plan_pattern("name").search("dbdata")
    assert not plan_pattern("name").search("dbdata\n")
    assert not plan_pattern("name").search("../etc")


def test_the_database_name_rule_is_the_schemas_and_refuses_what_sql_would_misread():
    rule = plan_pattern("database_name")
    assert rule.search("shop") and rule.search("shop_2024-copy")
    for bad in ("-shop", "shop`; DROP", "shop\n", "", "a" * 64):
        assert not rule.search(bad), bad
