"""CernVM-FS configuration files (``KEY=value``, bash syntax) interpreted without a shell.

The real client pipes every configuration file into ``bash`` and then asks the shell for the
value of each ``[export|readonly] NAME=`` line (spec 8.2; ``BashOptionsManager::ParsePath`` in
``cvmfs/cvmfs:cvmfs/options.cc``). We cannot run a shell on every node (and do not want files to
execute commands), so this module interprets the subset the shipped and site files use:

- ``NAME=value`` (several per line), ``export``/``readonly`` prefixes, ``;`` separators;
- ``'single'`` and ``"double"`` quotes, backslash escapes, ``\\``-newline continuation;
- ``$NAME``, ``${NAME}``, ``${NAME:-word}`` / ``${NAME-word}`` / ``${NAME:=word}`` /
  ``${NAME:+word}``, ``~`` at the start of a word or value (``$HOME``);
- ``# comments`` (a ``#`` starting a word, as in bash: ``a#b`` is a value);
- ``if``/``elif``/``else``/``fi`` over ``[ ... ]``/``test`` conditions (``-z``, ``-n``, ``=``,
  ``==``, ``!=``, ``-eq``.. ``-ge``, ``!``), ``&&``, ``||``, ``true``, ``false``, ``:``.

Anything else (command substitution, pipes, ``.``/``source``, other commands, unterminated
quotes, a line that is neither an assignment nor a construct above) is a ``ConfigError``
naming ``<file>:<line>``: a setting we silently misread is worse than a refusal.

Known, deliberate differences from bash: unquoted expansions are not word-split (``[ $X = y ]``
with an empty ``X`` is false rather than a syntax error), and ``${NAME:=word}`` only
substitutes (it does not also assign ``NAME``). An assignment in a branch that is not taken
does not touch the parameter (the real client would re-read its current value).

The interpreter is pure: values of names not assigned in the file come from a ``lookup``
callable (earlier configuration layers, then the environment).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import ConfigError

# IsOn / IsOff in cvmfs/cvmfs:cvmfs/options.cc (case-insensitive).
TRUE_WORDS = frozenset({"yes", "on", "1", "true"})
FALSE_WORDS = frozenset({"no", "off", "0", "false"})

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_RESERVED = frozenset({"if", "then", "elif", "else", "fi"})
# Shipped and site files nest ``if`` and ``${A:-${B}}`` one or two deep; the bound keeps hostile
# files from exhausting Python's recursion limit (RecursionError) in the parser and interpreter.
MAX_NESTING = 32
_INT_TESTS = {
    "-eq": lambda a, b: a == b,
    "-ne": lambda a, b: a != b,
    "-lt": lambda a, b: a < b,
    "-le": lambda a, b: a <= b,
    "-gt": lambda a, b: a > b,
    "-ge": lambda a, b: a >= b,
}
_UNSUPPORTED_CHARS = {
    "`": "command substitution (`...`) is not supported",
    "(": "subshells and functions are not supported",
    ")": "subshells and functions are not supported",
    "<": "redirections are not supported",
    ">": "redirections are not supported",
}


def parse_bool(value: str) -> bool | None:
    """``True``/``False`` for the real client's boolean words, ``None`` for anything else."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


@dataclass(frozen=True)
class Assignment:
    """One executed assignment, in execution order (a later one for the same name wins)."""

    name: str
    value: str
    line: int
    readonly: bool = False


# --- lexing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lit:
    text: str
    quoted: bool


@dataclass(frozen=True)
class _Var:
    name: str
    op: str | None  # ":-", "-", ":=", "=", ":+", "+" or None
    arg: tuple[_Part, ...]


@dataclass(frozen=True)
class _Tilde:
    """An unquoted ``~`` that bash replaces by ``$HOME``."""


_Part = _Lit | _Var | _Tilde


@dataclass(frozen=True)
class _Word:
    parts: tuple[_Part, ...]
    line: int

    @property
    def literal(self) -> str | None:
        """The text of a word made of unquoted literal characters only (reserved words, commands)."""
        if all(isinstance(p, _Lit) and not p.quoted for p in self.parts):
            return "".join(p.text for p in self.parts)  # type: ignore[union-attr]
        return None

    def assignment(self) -> tuple[str, tuple[_Part, ...]] | None:
        """``(name, value parts)`` if the word is ``NAME=...`` with an unquoted ``NAME=``."""
        first = self.parts[0] if self.parts else None
        if not isinstance(first, _Lit) or first.quoted:
            return None
        m = _ASSIGNMENT.match(first.text)
        if not m:
            return None
        rest = first.text[m.end() :]
        value = ((_Lit(rest, False),) if rest else ()) + self.parts[1:]
        return m.group(1), value


@dataclass(frozen=True)
class _Op:
    text: str  # ";", "&&", "||", "\n" or "" (end of file)
    line: int


_Token = _Word | _Op


class _Lexer:
    """Characters -> words and operators, refusing what the interpreter does not understand."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.i = 0
        self.line = 1
        self.depth = 0  # open ${NAME:-...} substitutions: lexing and expanding recurse per level

    def error(self, reason: str, line: int | None = None) -> ConfigError:
        return ConfigError(f"{self.source}:{line or self.line}: {reason}")

    def peek(self, offset: int = 0) -> str:
        j = self.i + offset
        return self.text[j] if j < len(self.text) else ""

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        parts: list[_Part] | None = None
        start = self.line

        def end_word() -> None:
            nonlocal parts
            if parts is not None:
                out.append(_Word(tuple(_merge(parts)), start))
                parts = None

        while self.i < len(self.text):
            c = self.peek()
            if c == "\\" and self.peek(1) == "\n":  # continuation: the line goes on
                self.i += 2
                self.line += 1
                continue
            if c in " \t\r":
                end_word()
                self.i += 1
                continue
            if c == "\n":
                end_word()
                out.append(_Op("\n", self.line))
                self.i += 1
                self.line += 1
                continue
            if c == "#" and parts is None:  # a comment starts only at the start of a word
                while self.i < len(self.text) and self.peek() != "\n":
                    self.i += 1
                continue
            if c in ";&|":
                end_word()
                two = c + self.peek(1)
                if two in ("&&", "||"):
                    out.append(_Op(two, self.line))
                    self.i += 2
                elif c == ";" and two != ";;":
                    out.append(_Op(";", self.line))
                    self.i += 1
                elif c == "|":
                    raise self.error("pipes (|) are not supported")
                elif c == "&":
                    raise self.error("background jobs (&) are not supported")
                else:
                    raise self.error("case statements (;;) are not supported")
                continue
            if c in _UNSUPPORTED_CHARS:
                raise self.error(_UNSUPPORTED_CHARS[c])
            if parts is None:
                parts = []
                start = self.line
            if c == "'":
                parts.append(self.single_quoted())
            elif c == '"':
                parts.extend(self.double_quoted())
            elif c == "$":
                parts.append(self.dollar())
            elif c == "~" and (not parts or _ends_assignment_prefix(parts)):
                self.i += 1
                if self.peek() not in ("", "/", ":", " ", "\t", "\n", ";"):
                    raise self.error("~user expansion is not supported; write the path")
                parts.append(_Tilde())
            elif c == "\\":
                if self.i + 1 >= len(self.text):
                    raise self.error("backslash at end of file")
                parts.append(_Lit(self.peek(1), True))
                self.i += 2
            else:
                parts.append(_Lit(c, False))
                self.i += 1
        end_word()
        out.append(_Op("", self.line))
        return out

    def single_quoted(self) -> _Lit:
        end = self.text.find("'", self.i + 1)
        newline = self.text.find("\n", self.i + 1)
        if end < 0 or (0 <= newline < end):
            raise self.error("unterminated single quote")
        lit = _Lit(self.text[self.i + 1 : end], True)
        self.i = end + 1
        return lit

    def double_quoted(self) -> list[_Part]:
        start_line = self.line
        self.i += 1
        parts: list[_Part] = []
        while True:
            c = self.peek()
            if c == "" or c == "\n":
                raise self.error("unterminated double quote", start_line)
            if c == '"':
                self.i += 1
                return parts or [_Lit("", True)]
            if c == "\\":
                nxt = self.peek(1)
                if nxt == "\n":
                    self.i += 2
                    self.line += 1
                    continue
                if nxt in ('"', "\\", "$", "`"):
                    parts.append(_Lit(nxt, True))
                    self.i += 2
                    continue
                parts.append(_Lit("\\", True))
                self.i += 1
                continue
            if c == "$":
                parts.append(self.dollar())
                continue
            if c == "`":
                raise self.error(_UNSUPPORTED_CHARS["`"])
            parts.append(_Lit(c, True))
            self.i += 1

    def dollar(self) -> _Part:
        nxt = self.peek(1)
        if nxt == "(":
            what = "arithmetic $((...))" if self.peek(2) == "(" else "command substitution $(...)"
            raise self.error(f"{what} is not supported")
        if nxt == "{":
            return self.braced()
        m = _NAME.match(self.text, self.i + 1)
        if m:
            self.i = m.end()
            return _Var(m.group(0), None, ())
        if nxt and (nxt.isdigit() or nxt in "?#@*!$-"):
            raise self.error(f"special parameter ${nxt} is not supported")
        self.i += 1
        return _Lit("$", True)  # a lone "$" is literal, as in bash

    def braced(self) -> _Var:
        if self.depth >= MAX_NESTING:
            raise self.error(f"${{...}} substitutions nested deeper than {MAX_NESTING} levels")
        self.depth += 1
        try:
            return self._braced()
        finally:
            self.depth -= 1

    def _braced(self) -> _Var:
        m = _NAME.match(self.text, self.i + 2)
        if not m:
            raise self.error("bad ${...} substitution: expected a variable name")
        name = m.group(0)
        self.i = m.end()
        if self.peek() == "}":
            self.i += 1
            return _Var(name, None, ())
        op = next((o for o in (":-", ":=", ":+", "-", "=", "+") if self.text.startswith(o, self.i)), None)
        if op is None:
            raise self.error(f"unsupported ${{{name}...}} substitution (use ${{{name}:-default}})")
        self.i += len(op)
        arg: list[_Part] = []
        while True:
            c = self.peek()
            if c == "" or c == "\n":
                raise self.error(f"unterminated ${{{name}...}} substitution")
            if c == "}":
                self.i += 1
                return _Var(name, op, tuple(_merge(arg)))
            if c == "'":
                arg.append(self.single_quoted())
            elif c == '"':
                arg.extend(self.double_quoted())
            elif c == "$":
                arg.append(self.dollar())
            elif c == "\\" and self.peek(1) not in ("", "\n"):
                arg.append(_Lit(self.peek(1), True))
                self.i += 2
            elif c in _UNSUPPORTED_CHARS:
                raise self.error(_UNSUPPORTED_CHARS[c])
            else:
                arg.append(_Lit(c, False))
                self.i += 1


def _ends_assignment_prefix(parts: Sequence[_Part]) -> bool:
    """True right after ``NAME=``, where bash also expands ``~`` (``CVMFS_CACHE_BASE=~/c``)."""
    if not all(isinstance(p, _Lit) and not p.quoted for p in parts):
        return False
    text = "".join(p.text for p in parts)  # type: ignore[union-attr]
    m = _ASSIGNMENT.match(text)
    return bool(m) and m.end() == len(text)


def _merge(parts: Sequence[_Part]) -> list[_Part]:
    """Join neighbouring literal characters of the same quoting (one part per run)."""
    out: list[_Part] = []
    for p in parts:
        prev = out[-1] if out else None
        if isinstance(p, _Lit) and isinstance(prev, _Lit) and prev.quoted == p.quoted:
            out[-1] = _Lit(prev.text + p.text, p.quoted)
        else:
            out.append(p)
    return out


# --- parsing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Simple:
    words: tuple[_Word, ...]
    line: int


@dataclass(frozen=True)
class _Not:
    command: _Node
    line: int


@dataclass(frozen=True)
class _AndOr:
    first: _Node
    rest: tuple[tuple[str, _Node], ...]
    line: int


@dataclass(frozen=True)
class _If:
    branches: tuple[tuple[tuple[_Node, ...], tuple[_Node, ...]], ...]  # (condition, body)
    otherwise: tuple[_Node, ...] | None
    line: int


_Node = _Simple | _Not | _AndOr | _If


@dataclass
class _Parser:
    tokens: list[_Token]
    source: str
    pos: int = 0
    depth: int = 0  # open ``if`` clauses: parsing and interpreting recurse once per level

    def error(self, reason: str, line: int) -> ConfigError:
        return ConfigError(f"{self.source}:{line}: {reason}")

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def at_reserved(self, words: frozenset[str]) -> str | None:
        tok = self.peek()
        if isinstance(tok, _Word) and tok.literal in words:
            return tok.literal
        return None

    def program(self) -> tuple[_Node, ...]:
        body = self.command_list(frozenset())
        tok = self.peek()
        if isinstance(tok, _Word):
            raise self.error(f"unexpected {tok.literal!r}", tok.line)
        return body

    def command_list(self, stops: frozenset[str]) -> tuple[_Node, ...]:
        """Commands up to end of file or a reserved word in ``stops`` at the start of a command."""
        nodes: list[_Node] = []
        while True:
            tok = self.peek()
            if isinstance(tok, _Op):
                if tok.text == "":
                    return tuple(nodes)
                if tok.text in (";", "\n"):
                    if tok.text == ";" and not nodes:
                        raise self.error("syntax error near ';'", tok.line)
                    self.take()
                    continue
                raise self.error(f"syntax error near {tok.text!r}", tok.line)
            if self.at_reserved(stops):
                return tuple(nodes)
            nodes.append(self.and_or())
            after = self.peek()
            if isinstance(after, _Word):
                raise self.error(f"unexpected {after.literal or 'word'!r} after a command", after.line)

    def and_or(self) -> _Node:
        first = self.pipeline()
        rest: list[tuple[str, _Node]] = []
        while isinstance(self.peek(), _Op) and self.peek().text in ("&&", "||"):  # type: ignore[union-attr]
            op = self.take().text  # type: ignore[union-attr]
            while isinstance(self.peek(), _Op) and self.peek().text == "\n":  # type: ignore[union-attr]
                self.take()
            rest.append((op, self.pipeline()))
        return _AndOr(first, tuple(rest), first.line) if rest else first

    def pipeline(self) -> _Node:
        tok = self.peek()
        if isinstance(tok, _Word) and tok.literal == "!":
            self.take()
            return _Not(self.command(), tok.line)
        return self.command()

    def command(self) -> _Node:
        tok = self.peek()
        if not isinstance(tok, _Word):
            raise self.error(f"syntax error: expected a command near {tok.text or 'end of file'!r}", tok.line)
        if tok.literal == "if":
            return self.if_clause()
        if tok.literal in _RESERVED:
            raise self.error(f"unexpected {tok.literal!r}", tok.line)
        words: list[_Word] = []
        while isinstance(self.peek(), _Word):
            words.append(self.take())  # type: ignore[arg-type]
        return _Simple(tuple(words), tok.line)

    def if_clause(self) -> _If:
        if self.depth >= MAX_NESTING:
            raise self.error(f"'if' nested deeper than {MAX_NESTING} levels", self.peek().line)
        self.depth += 1
        try:
            return self._if_clause()
        finally:
            self.depth -= 1

    def _if_clause(self) -> _If:
        start = self.take().line
        branches: list[tuple[tuple[_Node, ...], tuple[_Node, ...]]] = []
        otherwise: tuple[_Node, ...] | None = None
        keyword = "if"
        while True:
            cond = self.command_list(frozenset({"then", "elif", "else", "fi"}))
            if not cond:
                raise self.error(f"'{keyword}' without a condition", start)
            if self.at_reserved(frozenset({"then"})) is None:
                raise self.error(f"'{keyword}' without 'then'", start)
            self.take()
            body = self.command_list(frozenset({"elif", "else", "fi"}))
            branches.append((cond, body))
            keyword = self.at_reserved(frozenset({"elif", "else", "fi"})) or ""
            if not keyword:
                raise self.error("'if' without a closing 'fi'", start)
            self.take()
            if keyword == "elif":
                continue
            if keyword == "else":
                otherwise = self.command_list(frozenset({"fi"}))
                if self.at_reserved(frozenset({"fi"})) is None:
                    raise self.error("'if' without a closing 'fi'", start)
                self.take()
            return _If(tuple(branches), otherwise, start)


# --- interpreting -------------------------------------------------------------------------


@dataclass
class _Interpreter:
    source: str
    lookup: Callable[[str], str | None]
    local: dict[str, str] = field(default_factory=dict)
    readonly: set[str] = field(default_factory=set)
    assignments: list[Assignment] = field(default_factory=list)

    def error(self, reason: str, line: int) -> ConfigError:
        return ConfigError(f"{self.source}:{line}: {reason}")

    def variable(self, name: str) -> str | None:
        if name in self.local:
            return self.local[name]
        return self.lookup(name)

    def expand(self, parts: Sequence[_Part]) -> str:
        out: list[str] = []
        for p in parts:
            if isinstance(p, _Lit):
                out.append(p.text)
            elif isinstance(p, _Tilde):
                out.append(self.variable("HOME") or "~")
            else:
                out.append(self.substitute(p))
        return "".join(out)

    def substitute(self, var: _Var) -> str:
        value = self.variable(var.name)
        if var.op is None:
            return value or ""
        empty_counts = var.op.startswith(":")  # ":-" treats empty like unset, "-" only unset
        present = value is not None and (value != "" or not empty_counts)
        if var.op in (":-", "-", ":=", "="):
            return value if present else self.expand(var.arg)  # type: ignore[return-value]
        return self.expand(var.arg) if present else ""  # ":+", "+"

    def run(self, nodes: Sequence[_Node]) -> int:
        status = 0
        for node in nodes:
            status = self.execute(node)
        return status

    def execute(self, node: _Node) -> int:
        if isinstance(node, _Simple):
            return self.simple(node)
        if isinstance(node, _Not):
            return 0 if self.execute(node.command) else 1
        if isinstance(node, _AndOr):
            status = self.execute(node.first)
            for op, cmd in node.rest:
                if (op == "&&" and status == 0) or (op == "||" and status != 0):
                    status = self.execute(cmd)
            return status
        for cond, body in node.branches:
            if self.run(cond) == 0:
                return self.run(body)
        return self.run(node.otherwise) if node.otherwise is not None else 0

    def assign(self, name: str, value: str, line: int, readonly: bool = False) -> None:
        if name in self.readonly:
            raise self.error(f"{name}: readonly variable cannot be changed", line)
        self.local[name] = value
        if readonly:
            self.readonly.add(name)
        self.assignments.append(Assignment(name, value, line, readonly))

    def simple(self, node: _Simple) -> int:
        words = list(node.words)
        pending: list[tuple[str, str, int]] = []
        while words and (a := words[0].assignment()) is not None:
            pending.append((a[0], self.expand(a[1]), words[0].line))
            words.pop(0)
        if not words:
            for name, value, line in pending:
                self.assign(name, value, line)
            return 0
        command = words[0].literal
        if pending:
            raise self.error(
                f"an assignment before a command ({command or 'word'}) is not supported", node.line
            )
        if command is None:
            raise self.error("a command name must be a plain word (no quotes or $)", node.line)
        args = words[1:]
        if command in ("export", "readonly"):
            return self.declare(args, readonly=command == "readonly", line=node.line)
        if command in ("true", ":"):
            return 0
        if command == "false":
            return 1
        if command in ("[", "test"):
            values = [self.expand(w.parts) for w in args]
            if command == "[":
                if not values or values[-1] != "]" or args[-1].literal != "]":
                    raise self.error("'[' without a closing ']'", node.line)
                values = values[:-1]
            return 0 if self.test(values, node.line) else 1
        if command == "[[":
            raise self.error("[[ ... ]] is not supported; use [ ... ]", node.line)
        if _NAME.fullmatch(command) and args and (args[0].literal or "").startswith("="):
            raise self.error(
                f"malformed assignment: no spaces are allowed around '=' after {command}", node.line
            )
        raise self.error(
            f"unsupported command {command!r}: only NAME=value, export, readonly and if [ ... ] "
            "blocks are understood",
            node.line,
        )

    def declare(self, args: Sequence[_Word], readonly: bool, line: int) -> int:
        for word in args:
            a = word.assignment()
            if a is not None:
                self.assign(a[0], self.expand(a[1]), word.line, readonly)
                continue
            name = word.literal
            if name is None or not _NAME.fullmatch(name):
                raise self.error(f"expected NAME or NAME=value, got {self.expand(word.parts)!r}", word.line)
            if readonly:
                self.readonly.add(name)
        return 0

    def test(self, args: list[str], line: int) -> bool:
        """``test`` with at most four arguments, the forms configuration files use."""
        negate = False
        while len(args) >= 2 and args[0] == "!":  # a loop, not recursion: "! ! ! ..." is unbounded
            negate = not negate
            args = args[1:]
        return self._test(args, line) != negate

    def _test(self, args: list[str], line: int) -> bool:
        n = len(args)
        if n == 0:
            return False
        if n == 1:
            return args[0] != ""
        if n == 2:
            if args[0] == "-z":
                return args[1] == ""
            if args[0] == "-n":
                return args[1] != ""
            raise self.error(f"unsupported test operator {args[0]!r} (use -z, -n, =, != or -eq..)", line)
        if n == 3:
            a, op, b = args
            if op in ("=", "=="):
                return a == b
            if op == "!=":
                return a != b
            if op in _INT_TESTS:
                try:
                    return _INT_TESTS[op](int(a), int(b))
                except ValueError:
                    raise self.error(f"integer expression expected in [ {a} {op} {b} ]", line) from None
            if args[0] == "(" and args[2] == ")":
                return self.test([args[1]], line)
            raise self.error(f"unsupported test operator {op!r}", line)
        raise self.error("test expressions with -a/-o or more terms are not supported; use && and ||", line)


def interpret(text: str, source: str, lookup: Callable[[str], str | None] | None = None) -> list[Assignment]:
    """Run a configuration file's text; return the assignments executed, in order.

    ``lookup(name)`` answers references to names the file has not assigned (``None`` = unset).
    Raises ``ConfigError("<source>:<line>: <reason>")`` for anything outside the subset above.
    """
    tokens = _Lexer(text, source).tokens()
    program = _Parser(tokens, source).program()
    interpreter = _Interpreter(source, lookup or (lambda _name: None))
    interpreter.run(program)
    return interpreter.assignments
