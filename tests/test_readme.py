"""The README is a user's guide: its settings table must match the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from progressista.settings import ServerSettings, env_name, flag_name

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readme_starts_with_make_run_and_make_test() -> None:
    first_block = README.split("```")[1]
    assert re.search(r"^make run\b", first_block, re.M)
    assert re.search(r"^make test\b", first_block, re.M)


def test_every_setting_is_in_the_readme_table_with_its_flag_and_variable() -> None:
    rows = {
        match.group(2): match.group(1)
        for match in re.finditer(r"^\| `(--[a-z-]+)` \| `(PROGRESSISTA_[A-Z_]+)` \|", README, re.M)
    }
    expected = {
        env_name(setting.name): flag_name(setting.name)
        for setting in dataclasses.fields(ServerSettings)
    }
    assert rows == expected


def test_the_readme_says_how_to_move_make_run() -> None:
    assert "make run PORT=9000" in README
