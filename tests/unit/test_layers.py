"""The packages only import down their layers (scripts/layers.py), and Faust's private
internals are reached from one module only."""

from __future__ import annotations

import re
from pathlib import Path

from scripts import layers

ROOT = Path(__file__).resolve().parents[2]
# Private names of Faust (and its aiokafka driver) the project reaches, as written in code.
FAUST_PRIVATE = re.compile(
    r"_committed_offset|_ensure_producer|_consumer_wait_empty|\._assignment\b|\._consumer\b"
    r"|table\.data\b|\.data\[key\]|_build_offsets|\._recovery\b|_dbs\b|_key_index\b"
    r"|_settings_default|_settings_auth|_isolation_level|_create_worker_consumer|_new_consumer\b"
    r"|\._thread\b"
)


def test_no_module_imports_from_a_layer_above_its_own():
    """models <- pools <- agents.transfer <- agents <- app <- app.cli <- the entry point."""
    assert layers.upward(layers.imports()) == []


def test_the_check_sees_an_upward_import():
    """The check itself fails on a pool importing the composition root."""
    assert layers.upward([("pools.session", "app.main", 3)]) == ["pools.session:3 -> app.main"]


def test_nothing_in_the_composition_layer_imports_the_composition_root():
    """Views, metrics and settings are handed what they read; only the entry imports app.main."""
    importers = {a for a, b, _ in layers.imports() if b == "app.main"}
    assert importers <= {"app", "app.cli.commands"}


def test_faust_private_attributes_are_reached_from_the_door_only():
    """agents/faust_door.py is the only module naming Faust's private attributes."""
    offenders = []
    for package in layers.PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "faust_door.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if FAUST_PRIVATE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
