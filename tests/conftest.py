import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
