"""Fuzz the configuration interpreter (``config_parser.interpret``) with bash-like text."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from cvmfs_client.config_parser import interpret, parse_bool
from cvmfs_client.errors import CvmfsError

from .common import FUZZ, Property

_TOKENS = [
    "CVMFS_X=1",
    "A=",
    "B=$A",
    "C=${A:-d}",
    "D=${A:=x}",
    "E=${A:+y}",
    "F=${A-z}",
    "G=~/p",
    "export",
    "readonly",
    "if",
    "then",
    "elif",
    "else",
    "fi",
    "[",
    "]",
    "test",
    "!",
    "-z",
    "-n",
    "=",
    "==",
    "!=",
    "-eq",
    "-lt",
    "&&",
    "||",
    ";",
    "\n",
    " ",
    "\t",
    "#",
    "'",
    '"',
    "\\",
    "\\\n",
    "$",
    "${",
    "}",
    "(",
    ")",
    "`",
    "|",
    "&",
    ";;",
    "<",
    ">",
    "true",
    "false",
    ":",
    ".",
    "source",
    "~",
    "~user",
    "$1",
    "$?",
    "${#A}",
    "9" * 4400,
    "\u00b2",
]
config_text = st.one_of(
    st.text(max_size=120),
    st.lists(st.sampled_from(_TOKENS) | st.text("abcXYZ_=$0123456789", max_size=6), max_size=40).map("".join),
    st.lists(st.sampled_from(_TOKENS), max_size=40).map(" ".join),
)


def check_config(text: str) -> None:
    try:
        for a in interpret(text, "fuzz.conf", lambda name: "v" if name.startswith("E") else None):
            parse_bool(a.value)
    except CvmfsError:
        pass


PROPERTIES: dict[str, Property] = {"config_parser.interpret": (config_text, check_config)}


@FUZZ
@given(config_text)
# Regressions: deep nesting must be a ConfigError, not RecursionError.
@example("if true; then " * 2000 + "A=1" + "; fi" * 2000)
@example("[ " + "! " * 5000 + "x ] && A=1")
@example("A=" + "${A:-" * 3000 + "x" + "}" * 3000)
@example('A="' + '${A:-"' * 3000)
def test_config(text: str) -> None:
    check_config(text)
