"""The shell subset of configuration files: what it understands, and that it refuses the rest."""

from __future__ import annotations

import pytest

from cvmfs_client.config_parser import Assignment, interpret, parse_bool
from cvmfs_client.errors import ConfigError


def values(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    return {a.name: a.value for a in interpret(text, "test.conf", (env or {}).get)}


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        interpret(text, "/etc/cvmfs/test.conf", (env or {}).get)
    return str(info.value)


def test_plain_assignments_comments_and_blank_lines() -> None:
    text = "# header\n\nCVMFS_A=1\n   \nCVMFS_B=two   # trailing comment\n\t# indented comment\n"
    assert values(text) == {"CVMFS_A": "1", "CVMFS_B": "two"}


def test_assignments_report_their_line_in_execution_order() -> None:
    result = interpret("A=1\n\nB=2\nA=3\n", "f", None)
    assert result == [Assignment("A", "1", 1), Assignment("B", "2", 3), Assignment("A", "3", 4)]


def test_quotes_keep_spaces_and_hashes() -> None:
    text = "A='x # not a comment'\nB=\"y  z\"  # comment\nC=a#b\nD=''\nE=\"\"\n"
    assert values(text) == {"A": "x # not a comment", "B": "y  z", "C": "a#b", "D": "", "E": ""}


def test_single_quotes_are_literal_and_double_quotes_expand() -> None:
    env = {"X": "v"}
    assert values('A=\'$X\'\nB="$X"\nC="\\$X \\"q\\""\n', env) == {"A": "$X", "B": "v", "C": '$X "q"'}


def test_export_and_readonly_prefixes() -> None:
    result = interpret("export A=1\nreadonly B=2\nexport C\nexport D=4 E=5\n", "f", None)
    assert [(a.name, a.value, a.readonly) for a in result] == [
        ("A", "1", False),
        ("B", "2", True),
        ("D", "4", False),
        ("E", "5", False),
    ]


def test_readonly_variable_cannot_be_reassigned_in_the_same_file() -> None:
    assert error_of("readonly A=1\nA=2\n") == "/etc/cvmfs/test.conf:2: A: readonly variable cannot be changed"


def test_references_to_the_file_earlier_layers_and_environment() -> None:
    env = {"CVMFS_EARLIER": "/base", "HOME": "/home/u"}
    text = "A=$CVMFS_EARLIER/x\nB=${A}/y\nC=${UNSET:-fallback}\nD=${A:+set}\nE=${UNSET}\nF=$HOME\n"
    assert values(text, env) == {
        "A": "/base/x",
        "B": "/base/x/y",
        "C": "fallback",
        "D": "set",
        "E": "",
        "F": "/home/u",
    }


def test_colon_dash_treats_empty_as_unset_but_dash_does_not() -> None:
    env = {"EMPTY": ""}
    assert values("A=${EMPTY:-d}\nB=${EMPTY-d}\nC=${NONE-d}\nD=${EMPTY:=d}\n", env) == {
        "A": "d",
        "B": "",
        "C": "d",
        "D": "d",
    }


def test_several_assignments_per_line_and_semicolons() -> None:
    assert values("A=1 B=2; C=$A$B\n") == {"A": "1", "B": "2", "C": "12"}


def test_tilde_expands_to_home_at_the_start_of_a_value() -> None:
    env = {"HOME": "/home/u"}
    assert values("A=~/cache\nB=x~y\nC='~/q'\n", env) == {"A": "/home/u/cache", "B": "x~y", "C": "~/q"}


def test_backslash_newline_continues_a_value_and_keeps_the_first_line() -> None:
    result = interpret('A="one;\\\ntwo;\\\nthree"\nB=1\n', "f", None)
    assert result == [Assignment("A", "one;two;three", 1), Assignment("B", "1", 4)]


def test_if_else_chooses_one_branch_only() -> None:
    text = 'if [ "$CVMFS_USE_CDN" = "yes" ]; then\n  URL=cdn\nelse\n  URL=direct\nfi\n'
    assert values(text, {"CVMFS_USE_CDN": "yes"}) == {"URL": "cdn"}
    assert values(text, {}) == {"URL": "direct"}


def test_if_elif_then_on_its_own_line_and_nesting() -> None:
    text = (
        'if [ "$X" = a ]\nthen\n  R=a\n'
        'elif [ -n "$X" ]; then\n'
        '  if [ "$X" != b ]; then R=other; else R=b; fi\n'
        "fi\n"
    )
    assert values(text, {"X": "a"}) == {"R": "a"}
    assert values(text, {"X": "b"}) == {"R": "b"}
    assert values(text, {"X": "c"}) == {"R": "other"}
    assert values(text, {}) == {}


def test_and_or_not_and_test_forms() -> None:
    text = (
        'if [ -z "$P" ] || [ "$P" = "DIRECT" ]; then A=1; fi\n'
        'if ! [ "$P" = "DIRECT" ] && test -n "$P"; then B=1; fi\n'
        'if [ ! -z "$P" ]; then C=1; fi\n'
        "if [ 3 -gt 2 ]; then D=1; fi\n"
        'if [ "x$P" = "x" ]; then E=1; fi\n'
        "if true && ! false; then F=1; fi\n"
    )
    assert values(text, {}) == {"A": "1", "E": "1", "D": "1", "F": "1"}
    assert values(text, {"P": "DIRECT"}) == {"A": "1", "C": "1", "D": "1", "F": "1"}
    assert values(text, {"P": "http://p:3128"}) == {"B": "1", "C": "1", "D": "1", "F": "1"}


def test_assignment_in_a_branch_not_taken_leaves_no_trace() -> None:
    assert interpret("if false; then A=1; fi\n", "f", None) == []


def test_real_style_guarded_readonly_block() -> None:
    text = (
        'if [ "x$CVMFS_BASE_ENV" = "x" ]; then\n'
        "  readonly CVMFS_USER=cvmfs\n"
        "  readonly CVMFS_BASE_ENV=1\n"
        "fi\n"
    )
    assert values(text) == {"CVMFS_USER": "cvmfs", "CVMFS_BASE_ENV": "1"}
    assert values(text, {"CVMFS_BASE_ENV": "1"}) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A=1\nFOO bar\n", "/etc/cvmfs/test.conf:2: unsupported command 'FOO'"),
        ("A=1\n\nB='open\n", "/etc/cvmfs/test.conf:3: unterminated single quote"),
        ('B="open\nC=1\n', "/etc/cvmfs/test.conf:1: unterminated double quote"),
        ("A=$(hostname)\n", "/etc/cvmfs/test.conf:1: command substitution $(...) is not supported"),
        ("A=`hostname`\n", "/etc/cvmfs/test.conf:1: command substitution (`...`) is not supported"),
        ("A=$((1+1))\n", "/etc/cvmfs/test.conf:1: arithmetic $((...)) is not supported"),
        (". ../common.conf\n", "/etc/cvmfs/test.conf:1: unsupported command '.'"),
        ("A=1 | cat\n", "/etc/cvmfs/test.conf:1: pipes (|) are not supported"),
        ("A=1 > /tmp/x\n", "/etc/cvmfs/test.conf:1: redirections are not supported"),
        ("\nif [ a = a ]; then\nA=1\n", "/etc/cvmfs/test.conf:2: 'if' without a closing 'fi'"),
        ("if [ a = a ]; A=1; fi\n", "/etc/cvmfs/test.conf:1: 'if' without 'then'"),
        ("fi\n", "/etc/cvmfs/test.conf:1: unexpected 'fi'"),
        ("if [ a = a; then A=1; fi\n", "/etc/cvmfs/test.conf:1: '[' without a closing ']'"),
        ("if [ -f /etc/x ]; then A=1; fi\n", "/etc/cvmfs/test.conf:1: unsupported test operator '-f'"),
        ("A=${B/x/y}\n", "/etc/cvmfs/test.conf:1: unsupported ${B...} substitution"),
        ("A=$1\n", "/etc/cvmfs/test.conf:1: special parameter $1 is not supported"),
        ("X=1 env\n", "/etc/cvmfs/test.conf:1: an assignment before a command (env) is not supported"),
    ],
)
def test_what_cannot_be_interpreted_is_an_error_naming_file_and_line(text: str, message: str) -> None:
    assert error_of(text).startswith(message)


def test_spaces_around_equals_are_a_malformed_line() -> None:
    assert error_of("CVMFS_A = 1\n").startswith("/etc/cvmfs/test.conf:1: malformed assignment")


@pytest.mark.parametrize("word", ["yes", "YES", "on", "On", "1", "true", "TRUE", " yes "])
def test_true_words(word: str) -> None:
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", ["no", "No", "off", "OFF", "0", "false", "False"])
def test_false_words(word: str) -> None:
    assert parse_bool(word) is False


@pytest.mark.parametrize("word", ["", "y", "2", "enabled", "nope"])
def test_other_words_are_neither(word: str) -> None:
    assert parse_bool(word) is None
