"""Read the Dockerfile into stages of instructions, and apply .dockerignore the way Docker does."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON-array form of ENTRYPOINT/CMD/HEALTHCHECK CMD arguments."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + len("CMD") :]
        value = json.loads(text)
        assert isinstance(value, list), f"line {self.line}: not an exec-form array"
        return [str(item) for item in value]


@dataclass
class Stage:
    base: str
    name: str | None
    raw_base: str = ""
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV values set in this stage (the ``KEY=value`` form only)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for key, value in re.findall(r"(\w+)=(\S+)", instruction.arguments):
                values[key] = value
        return values


def global_args(path: Path) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (the ones FROM lines may use)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.upper().startswith("FROM "):
            break
        found = re.fullmatch(r"ARG\s+(\w+)(?:=(\S*))?", stripped, re.IGNORECASE)
        if found:
            values[found.group(1)] = (found.group(2) or "").strip("\"'")
    return values


def parse(path: Path) -> list[Stage]:
    """Stages in order; continuation lines joined, comments and blank lines dropped. A stage's
    base has the global ARGs' defaults filled in; ``raw_base`` keeps the FROM text."""
    stages: list[Stage] = []
    defaults = global_args(path)
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction is dropped by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(arguments.split()), start)
        if instruction.keyword == "FROM":
            parts = instruction.arguments.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m.group(1) or m.group(2)], parts[0]
            )
            stages.append(Stage(base, name, raw_base=parts[0]))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match semantics plus ``**``, as Docker's pattern matcher uses them."""
    out = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            if pattern.startswith("/", index):
                out = out[:-2] + "(?:.*/)?"
                index += 1
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", index)
            out += "[" + pattern[index + 1 : end].replace("^", "\\^") + "]"
            index = end
        else:
            out += re.escape(char)
        index += 1
    return re.compile(out + r"\Z")


Rules = list[tuple[bool, str, re.Pattern[str]]]


def dockerignore_rules(context: Path) -> Rules:
    """(include?, cleaned pattern, regex) per .dockerignore line, in order."""
    rules: Rules = []
    for raw in (context / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line[1:].strip() if include else line
        pattern = str(Path(pattern)).lstrip("/")  # Docker cleans patterns the same way
        rules.append((include, pattern, _pattern_regex(pattern)))
    return rules


def is_excluded(relative: str, rules: Rules) -> bool:
    """A path is excluded if the last rule matching it or one of its parent directories excludes."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for include, _pattern, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not include
    return excluded


def build_context(context: Path) -> set[str]:
    """Relative paths of the files Docker would send as the build context."""
    rules = dockerignore_rules(context)
    sent: set[str] = set()
    for root, dirs, files in os.walk(context):
        here = Path(root).relative_to(context)
        dirs[:] = [d for d in dirs if not _skippable((here / d).as_posix(), rules)]
        for name in files:
            relative = (here / name).as_posix()
            if not is_excluded(relative, rules):
                sent.add(relative)
    return sent


def _skippable(directory: str, rules: Rules) -> bool:
    """An excluded directory that no `!` rule could reach into (what Docker skips too)."""
    if not is_excluded(directory, rules):
        return False
    return not any(
        include and (pattern.startswith(directory + "/") or any(c in pattern for c in "*?["))
        for include, pattern, _regex in rules
    )
