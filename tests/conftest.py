"""Shared fixtures. Test data lives under tests/fixtures/; nothing outside the repo is read."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The reference fixtures: official-code outputs for known weights and inputs (see their READMEs)."""
    return FIXTURES / "reference"
