"""Variant symlink expansion (spec 5.8): the client's rules, not the shell's."""

from __future__ import annotations

import pytest

from cvmfs_client.symlinks import expand_symlink


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ARCH": "aarch64"}, "/opt/aarch64/lib"),
        ({"ARCH": ""}, "/opt//lib"),  # set but empty: used as is, unlike the shell
        ({}, "/opt/x86_64/lib"),
    ],
)
def test_spec_example(env: dict[str, str], expected: str) -> None:
    assert expand_symlink("/opt/$(ARCH:-x86_64)/lib", env) == expected


def test_unset_variable_without_default_is_empty() -> None:
    assert expand_symlink("a/$(NOPE)/b", {}) == "a//b"


def test_plain_target_is_unchanged() -> None:
    assert expand_symlink("../bin/tput", {"X": "y"}) == "../bin/tput"


def test_fixture_variant_symlink() -> None:
    assert expand_symlink("$(TOOLS_FLAVOR:-generic)", {}) == "generic"
    assert expand_symlink("$(TOOLS_FLAVOR:-generic)", {"TOOLS_FLAVOR": "debug"}) == "debug"


def test_first_close_paren_ends_the_reference() -> None:
    # No nesting: the default is "a(b" and the second ')' is literal text.
    assert expand_symlink("$(V:-a(b))", {}) == "a(b)"
    assert expand_symlink("$(V:-a(b))", {"V": "x"}) == "x)"


def test_first_separator_splits_name_and_default() -> None:
    assert expand_symlink("$(V:-x:-y)", {}) == "x:-y"
    assert expand_symlink("$(V:-)", {}) == ""


def test_unterminated_reference_is_literal() -> None:
    assert expand_symlink("/a/$(V:-x", {"V": "no"}) == "/a/$(V:-x"
    assert expand_symlink("end$(", {}) == "end$("
    assert expand_symlink("$(A)$(B", {"A": "1"}) == "1$(B"


def test_several_references_and_dollar_without_paren() -> None:
    env = {"A": "1", "B": "2"}
    assert expand_symlink("$A/$(A)/$(B)$(C:-3)$", env) == "$A/1/23$"


def test_value_is_not_expanded_again() -> None:
    assert expand_symlink("$(A)", {"A": "$(B)", "B": "no"}) == "$(B)"


def test_empty_name_is_an_unset_variable() -> None:
    assert expand_symlink("x$()y", {}) == "xy"
    assert expand_symlink("x$(:-d)y", {}) == "xdy"
