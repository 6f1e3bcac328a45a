"""The integration session's lab pool.

By default the session makes its own: lab hosts from nothing, then
central_manager.yml and provider.yml, removed afterwards.
TIDE_TEST_REUSE_LAB=1 keeps and reuses a running lab (inner loops).
TIDE_TEST_LAB=external leaves the lab's life to whoever called the tests:
Molecule's verify runs them on the lab its scenario created and converged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import lab


@pytest.fixture(scope="session", autouse=True)
def pool() -> Iterator[None]:
    if os.environ.get("TIDE_TEST_LAB") == "external":
        yield
        return
    reuse = os.environ.get("TIDE_TEST_REUSE_LAB") == "1"
    if not reuse:
        lab.lab_down()
    lab.lab_up()
    lab.converge()
    yield
    if not reuse:
        lab.lab_down()
