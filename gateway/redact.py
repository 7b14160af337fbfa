"""What may be printed of text that can hold a secret: a Redis URL with its password masked, and
a YAML syntax error without the source it quotes. Used wherever such text reaches a terminal, a
log line or a repr (check-config, a reload's log, the settings' repr).
"""

from __future__ import annotations

import re

import yaml

# The userinfo of a URL (`user:password@`, `:password@`, or a lone `name@`), and a password
# given as a query parameter (`?password=...`), both of which redis-py reads.
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")
_PASSWORD_PARAM_RE = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def masked_url(url: str) -> str:
    """A Redis URL fit to print: `redis://:***@host:6379/0`. The password becomes `***`, and so
    does a lone name before `@` (redis-py would send it as the user; it may be a password)."""

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match[2].partition(":")
        return f"{match[1]}{user}:***@" if colon else f"{match[1]}***@"

    return _PASSWORD_PARAM_RE.sub(r"\1***", _USERINFO_RE.sub(userinfo, url, count=1))


# A fragment PyYAML quotes in a problem: a character ('\t'), a token (':', '<scalar>'), or
# something of the source itself (an alias or a tag name), which may be a secret.
_QUOTED_RE = re.compile(r"'(?:[^'\\]|\\.)*'")


def yaml_problem(exc: yaml.YAMLError) -> str:
    """`not valid YAML at line L, column C: <problem>`, never the source text: PyYAML's own
    message quotes the offending line, and that line may hold an inline key."""

    def scrub(text: str) -> str:
        return _QUOTED_RE.sub(
            lambda m: m[0] if len(m[0]) <= 4 or m[0].startswith("'<") else "'...'", text
        )

    if isinstance(exc, yaml.MarkedYAMLError):
        mark, problem = exc.problem_mark, scrub(exc.problem or "a syntax error")
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        if exc.context and (start := exc.context_mark):
            problem += f" ({scrub(exc.context)} from line {start.line + 1})"
        elif exc.context:
            problem += f" ({scrub(exc.context)})"
        return f"not valid YAML{at}: {problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or " ")
        return (
            f"not valid YAML at character {exc.position + 1}: unacceptable character #x{char:04x}"
        )
    return f"not valid YAML ({type(exc).__name__})"
