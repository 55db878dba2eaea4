"""Fixtures for the toy-sized ml tests."""

from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Toy-sized ops are dominated by thread hand-off: one intra-op thread is ~10x faster on a
    busy 2-core box. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
