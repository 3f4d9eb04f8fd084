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


@pytest.fixture(scope="module")
def example_count():
    """Print how many examples each property test of a file ran (helpers.EXAMPLES, pytest -s) at
    the file's end, then start the count again for the next file."""
    from helpers import EXAMPLES

    yield
    total = sum(EXAMPLES.values())
    lines = "\n".join(f"  {name}: {count}" for name, count in sorted(EXAMPLES.items()))
    print(f"\nhypothesis examples run: {total}\n{lines}")
    EXAMPLES.clear()


@pytest.fixture(scope="module")
def model():
    """The tiny model with every parameter random (helpers.random_model), built once per file."""
    from helpers import random_model

    return random_model()
