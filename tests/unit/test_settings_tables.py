"""docs/configuration.md's tables are the settings classes' defaults, and every setting has its sentence."""

from __future__ import annotations

import dataclasses

import pytest

from backend.settings import ModelSettings, PreprocessSettings, parameter_table
from gateway.settings import ENVIRONMENT, GatewaySettings
from tools import settings_tables


def test_the_page_is_what_the_classes_render():
    page = settings_tables.PAGE.read_text()
    assert settings_tables.render(page) == page, "run: python -m tools.settings_tables --write"


def test_every_setting_has_a_meaning_and_every_meaning_a_setting():
    assert settings_tables.missing_meanings() == []


def test_every_default_and_variable_is_in_the_page():
    page = settings_tables.PAGE.read_text()
    for cls in (PreprocessSettings, ModelSettings):
        for name, default in parameter_table(cls):
            shown = default.lower() if default in ("True", "False") else default
            assert f"| `{name}` | `{shown}` |" in page, (name, default)
    for field in dataclasses.fields(GatewaySettings):
        assert f"| `{ENVIRONMENT[field.name]}` |" in page, field.name


def test_a_hand_edited_table_is_put_back():
    page = settings_tables.PAGE.read_text()
    edited = page.replace("| `token_budget` | `16384` |", "| `token_budget` | `8192` |")
    assert edited != page
    assert settings_tables.render(edited) == page
    assert settings_tables.main(["--check"]) == 0


def test_a_page_without_its_markers_is_an_error():
    with pytest.raises(ValueError, match="no generated block"):
        settings_tables.render("# Configuration\n")
