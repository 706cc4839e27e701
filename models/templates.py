"""Path templates with ``{placeholder}`` fields (completion targets, watch destinations)."""

from __future__ import annotations

import string
from collections.abc import Sequence


def template_problem(template: str, placeholders: Sequence[str]) -> str | None:
    """What is wrong with ``template``, or None: it may use only ``placeholders``, plainly (no
    format spec, no conversion). The message reads after a subject ("target ...")."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"is not a valid template ({exc})"
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in placeholders or spec or conversion:
            known = ", ".join("{" + p + "}" for p in placeholders)
            return f"uses {{{name}}}; known placeholders: {known}"
    return None
