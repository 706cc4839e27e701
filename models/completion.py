"""Completion actions: what happens to a transfer's source once its destination is in place.

``none`` leaves the source alone, ``delete`` removes it, ``move`` renames it to a path rendered
from a template such as ``/archive/{yyyy}/{mm}/{name}``. A task may carry one (``completion``);
otherwise its source connection's default from ``connections.ini`` applies.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from models.templates import template_problem

ACTIONS = ("none", "delete", "move")
ActionName = Literal["none", "delete", "move"]
MAX_TARGET_CHARS = 4096
# {name} a.csv, {stem} a, {suffix} .csv, {dir} the source's directory, the date and time of
# delivery in UTC, and the task's id.
PLACEHOLDERS = ("name", "stem", "suffix", "dir", "task_id", "yyyy", "mm", "dd", "hh")


@dataclass(frozen=True)
class CompletionAction:
    """An action and, for ``move``, its target template."""

    action: ActionName = "none"
    target: str | None = None

    def __post_init__(self) -> None:
        problem = check_action(self.action, self.target)
        if problem:
            raise ValueError(problem)

    @property
    def active(self) -> bool:
        return self.action != "none"

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, **({"target": self.target} if self.target else {})}

    def render(self, source_path: str, task_id: str, when: datetime) -> str:
        """The move target for ``source_path``, delivered at ``when`` (UTC)."""
        assert self.target is not None
        directory, name = posixpath.split(source_path)
        stem, suffix = posixpath.splitext(name)
        return self.target.format(
            name=name,
            stem=stem,
            suffix=suffix,
            dir=directory.rstrip("/"),
            task_id=task_id,
            yyyy=f"{when.year:04d}",
            mm=f"{when.month:02d}",
            dd=f"{when.day:02d}",
            hh=f"{when.hour:02d}",
        )


def check_action(action: str, target: str | None) -> str | None:
    """What is wrong with an action and its target, or None."""
    if action not in ACTIONS:
        return f"action must be one of {', '.join(ACTIONS)}; got {action!r}"
    if action != "move":
        return "target is only meaningful with action move" if target is not None else None
    if not target:
        return "move needs a target (e.g. /archive/{yyyy}/{mm}/{name})"
    return check_template(target)


def check_template(template: str) -> str | None:
    """A target template may use only the known placeholders, plainly (no format spec)."""
    if len(template) > MAX_TARGET_CHARS:
        return f"target is longer than {MAX_TARGET_CHARS} characters"
    if "\x00" in template:
        return "target must not contain a NUL character"
    problem = template_problem(template, PLACEHOLDERS)
    return None if problem is None else f"target {problem}"


def from_settings(
    values: Mapping[str, str], fail: Callable[[str, str], Exception]
) -> CompletionAction | None:
    """A connection's default from its ``completion`` and ``completion_target`` keys (None
    when neither is given); ``fail(key, message)`` builds the error to raise."""
    if "completion" not in values and "completion_target" not in values:
        return None
    action = values.get("completion", "none").strip().lower()
    target = values.get("completion_target")
    target = target.strip() if target is not None else None
    if action not in ACTIONS:
        raise fail("completion", f"must be one of {', '.join(ACTIONS)}; got {action!r}")
    problem = check_action(action, target)
    if problem:
        raise fail("completion_target" if target is not None else "completion", problem)
    return CompletionAction(cast(ActionName, action), target)  # checked above


NONE = CompletionAction()
