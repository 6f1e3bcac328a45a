"""The integration session starts its own lab pool: lab hosts from nothing,
then central_manager.yml and worker.yml. TIDE_TEST_REUSE_LAB=1 keeps and
reuses a running lab (inner loops); by default the lab is made fresh and
removed afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import lab


@pytest.fixture(scope="session", autouse=True)
def pool() -> Iterator[None]:
    reuse = os.environ.get("TIDE_TEST_REUSE_LAB") == "1"
    if not reuse:
        lab.lab_down()
    lab.lab_up()
    lab.converge()
    yield
    if not reuse:
        lab.lab_down()
