"""Fixtures for the twin's tests (helpers live in twin_helpers.py: a module named conftest
cannot be imported reliably when several test folders have one)."""

from __future__ import annotations

import pytest

from twin_helpers import synthetic_rows, write_csv


@pytest.fixture
def rows():
    return synthetic_rows()


@pytest.fixture
def csv_path(tmp_path, rows):
    p = tmp_path / "tracks.csv"
    write_csv(p, rows)
    return p
