"""`dataloader --help` describes every subcommand, and each one's own --help works.

Through the installed console script as a separate process; the list of subcommands comes from
the parser itself, so a new subcommand without a description fails here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dagsters.local.cli import build_parser

CLI = str(Path(sys.executable).with_name("dataloader"))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, str]:
    """name -> help, for every subcommand (and nested ones, as "secret set")."""
    found: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                found[choice.dest] = choice.help or ""
                nested = _subcommands(action.choices[choice.dest])
                found.update({f"{choice.dest} {k}": v for k, v in nested.items()})
    return found


SUBCOMMANDS = _subcommands(build_parser())


def _help(*args: str) -> str:
    done = subprocess.run(
        [CLI, *args, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return re.sub(r"\s+", " ", done.stdout)


def test_every_subcommand_is_listed_with_a_description():
    assert {"dev", "migrate", "psql", "release", "secret", "secret set", "secret list"} <= set(
        SUBCOMMANDS
    )
    top = _help()
    for name, text in SUBCOMMANDS.items():
        assert len(text.split()) >= 3, f"{name!r} has no real description: {text!r}"
        if " " not in name:
            described = " ".join(text.split())
            assert f"{name} {described}" in top, f"{name} not described in --help"
    assert "release a row that retry analysis sent to review" in top


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_its_own_help(name):
    text = _help(*name.split())
    assert f"usage: dataloader {name}" in text
    nested = [k for k in SUBCOMMANDS if k.startswith(f"{name} ")]
    for child in nested:
        assert child.split()[-1] in text
