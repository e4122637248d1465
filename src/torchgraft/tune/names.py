"""Dotted-name patterns: match parameters by module name, and write sets of names back compactly.

A pattern names a module (or a parameter) and matches everything inside it: ``layer3`` matches
``layer3.0.conv1.weight``. Glob syntax, on whole dotted names:

* ``*`` any characters except ``.``; ``**`` any characters; ``?`` one character;
* ``{0..21}`` an integer range, ``{a,b,c}`` alternatives (``features.{0..21}``, ``{conv1,bn1}``);
* ``re:<regex>`` a Python regular expression instead of a glob (``re:encoder\\.layer\\.[0-5]``).

Patterns never run user code: a regex is compiled with :mod:`re`, never evaluated.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = [
    "collapse_names",
    "compile_pattern",
    "compress_names",
    "name_prefixes",
    "shown_names",
    "top_modules",
    "under",
]

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")


def _brace(body: str, pattern: str) -> str:
    """Regex for the inside of ``{...}``: a numeric range or comma-separated alternatives."""
    numeric = _RANGE.fullmatch("{" + body + "}")
    if numeric:
        low, high = int(numeric[1]), int(numeric[2])
        if low > high:
            raise ValueError(f"pattern {pattern!r}: empty range {{{body}}}; write the low end first.")
        return "(?:" + "|".join(str(i) for i in range(low, high + 1)) + ")"
    return "(?:" + "|".join(_glob(part, pattern) for part in body.split(",")) + ")"


def _glob(text: str, pattern: str) -> str:
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if text.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "{":
            end = text.find("}", i)
            if end < 0:
                raise ValueError(f"pattern {pattern!r}: '{{' without a closing '}}'.")
            out.append(_brace(text[i + 1 : end], pattern))
            i = end + 1
            continue
        out.append({"*": r"[^.]*", "?": r"[^.]"}.get(char, re.escape(char)))
        i += 1
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a name pattern (glob, or ``re:`` regex) into a regex that matches the named module or
    parameter and everything inside it.

    Raises:
        ValueError: an empty pattern, an unclosed brace, an empty range or an invalid regex.

    Example:
        >>> bool(compile_pattern("features.{0..21}").fullmatch("features.7.weight"))
        True
    """
    if not isinstance(pattern, str) or not pattern.strip():
        raise ValueError(f"empty name pattern {pattern!r}: name a module, e.g. 'layer3' or 'features.{{0..21}}'.")
    if pattern.startswith("re:"):
        body = pattern[3:]
        try:
            re.compile(body)
        except re.error as error:
            raise ValueError(f"pattern {pattern!r}: invalid regular expression ({error}).") from None
    else:
        body = _glob(pattern, pattern)
    return re.compile(rf"(?:{body})(?:\..*)?")


def name_prefixes(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b", "a.b.c"]``: the modules a parameter lives in, outermost first."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def under(name: str, modules: Sequence[str]) -> bool:
    """Whether ``name`` is one of ``modules`` or lies inside one of them."""
    return any(name == m or name.startswith(m + ".") for m in modules)


def top_modules(members: Sequence[str], scope: Sequence[str]) -> list[str]:
    """The outermost module names whose parameters all belong to ``members`` (a subset of ``scope``).

    Example:
        >>> top_modules(["a.0.w", "a.1.w"], ["a.0.w", "a.1.w", "b.w"])
        ['a']
    """
    inside, total = Counter(), Counter()
    chosen = set(members)
    for name in scope:
        for prefix in name_prefixes(name):
            total[prefix] += 1
            if name in chosen:
                inside[prefix] += 1
    tops: list[str] = []
    for name in members:
        top = next(p for p in name_prefixes(name) if inside[p] == total[p])
        if not tops or tops[-1] != top:
            tops.append(top)
    return tops


def shown_names(names: Sequence[str], prefix: str) -> list[str]:
    """Names without ``prefix`` (as a plan shows them), unless that would read like a top-level ``head``/``body``."""
    out = []
    for name in names:
        short = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        out.append(name if short != name and short.split(".")[0] in ("head", "body") else short)
    return out


def compress_names(names: Sequence[str]) -> list[str]:
    """Write consecutive sibling names that differ only in a trailing number as one range pattern.

    Example:
        >>> compress_names(["layers.0", "layers.1", "layers.2", "norm"])
        ['layers.{0..2}', 'norm']
    """
    out: list[str] = []
    run: list[tuple[str, int]] = []  # (stem, number) of the current run

    def flush() -> None:
        if len(run) > 2:
            out.append(f"{run[0][0]}{{{run[0][1]}..{run[-1][1]}}}")
        else:
            out.extend(f"{stem}{number}" for stem, number in run)
        run.clear()

    for name in names:
        match = _TRAILING_NUMBER.match(name)
        if (
            match
            and run
            and match[1] == run[-1][0]
            and int(match[2]) == run[-1][1] + 1
            and str(int(match[2])) == match[2]
        ):
            run.append((match[1], int(match[2])))
            continue
        flush()
        if match and str(int(match[2])) == match[2]:
            run.append((match[1], int(match[2])))
        else:
            out.append(name)
    flush()
    return out


def collapse_names(names: Iterable[str], *, dash: str = "–") -> str:
    """A readable summary of consecutive module names: ``layer3.0–layer4.1`` for a long run, else a list.

    Example:
        >>> collapse_names(["conv1", "bn1", "layer1", "layer2"])
        'conv1–layer2'
    """
    names = list(names)
    if len(names) > 2:
        return f"{names[0]}{dash}{names[-1]}"
    return ", ".join(names)
