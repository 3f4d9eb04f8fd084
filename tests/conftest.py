"""Fixtures shared by several test files (plain helpers are in helpers.py).

A file that wants one of them for all its tests names it once:
`pytestmark = pytest.mark.usefixtures("one_thread")`."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a test file's tiny networks on one thread (much faster on a shared 2-core machine, where
    more threads only spin), then give back the thread count it found."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
