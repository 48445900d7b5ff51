import os

import pytest

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
