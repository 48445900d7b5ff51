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
    """Under `pytest -n 2`: two queues that start with their long tests, so both workers end together on short ones.

    pytest-xdist's worksteal hands the first half of the collection to one worker and the second half to the other,
    and an idle worker steals from the END of the other's queue. So the long tests (browser, real model, the
    provenance reruns) are split between the halves by expected cost, heaviest first, and the short tests fill each
    half behind them: a steal takes short tests, and no long test starts alone at the end (the Voilà test, last in
    file order, used to run by itself for ~5 minutes while the other core idled)."""
    if XDIST_WORKER:
        items[:] = two_queues(items)


def _cost(item: pytest.Item) -> float:
    """Expected seconds, roughly: browser tests ~100, a provenance rerun ~1/3 of its bake, other real-model tests
    ~10, the rest ~1."""
    if item.get_closest_marker("browser"):
        return 100.0
    entry = getattr(getattr(item, "callspec", None), "params", {}).get("entry")
    if isinstance(entry, dict) and isinstance(entry.get("seconds"), (int, float)):
        return 10.0 + entry["seconds"] / 3
    return 10.0 if item.get_closest_marker("slow") else 1.0


def _file(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


def two_queues(items: list[pytest.Item]) -> list[pytest.Item]:
    """Items reordered as [half 1 | half 2] (half 1 has len // 2 items): the long ones shared out by cost (each to
    the half with less so far), each half's long tests first, grouped by module (module fixtures set up once)."""
    cost = {id(i): _cost(i) for i in items}
    heavy = sorted((i for i in items if cost[id(i)] >= 10), key=lambda i: -cost[id(i)])
    light = [i for i in items if cost[id(i)] < 10]
    halves: list[list[pytest.Item]] = [[], []]
    load = [0.0, 0.0]
    for item in heavy:
        k = 0 if load[0] <= load[1] else 1
        halves[k].append(item)
        load[k] += cost[id(item)]
    first = len(items) // 2 - len(halves[0])
    if first < 0:  # more long tests than half the collection: keep the collection's order
        return items
    for k, part in enumerate((light[:first], light[first:])):
        module_cost: dict[str, float] = {}
        for item in halves[k]:
            module_cost[_file(item)] = module_cost.get(_file(item), 0.0) + cost[id(item)]
        halves[k].sort(key=lambda i: (-module_cost[_file(i)], _file(i)))  # stable: heaviest first within a module
        halves[k] += part
    return halves[0] + halves[1]


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
