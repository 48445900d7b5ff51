import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # set under `pytest -n 2` (pytest-xdist)


def pytest_configure(config: pytest.Config) -> None:
    if XDIST_WORKER:  # two workers on two cores: one torch thread each, not two threads fighting over each core
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n 2`, the long tests (real model, browser, launchers) are handed out first, so the short ones
    fill the gaps and both workers end together instead of one finishing a long test alone at the end."""
    if XDIST_WORKER:
        items.sort(key=lambda item: not any(item.get_closest_marker(m) for m in ("slow", "browser")))  # stable: order kept


@pytest.fixture(scope="session")
def pi0():
    """The real embedded default model (SmolLM2-135M-Instruct), loaded once per session."""
    import triangle_nb as tnb

    return tnb.load_policy()


@pytest.fixture()
def tiny():
    """A fresh tiny random model with the real tokenizer (each test may add adapters freely)."""
    from triangle_nb.testing import tiny_policy

    return tiny_policy()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny-model modules opt in: ~10x faster on one thread when the 2 cores are shared (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
