"""The public shape: arrow modules that do not import each other, and one vocabulary across the arrows."""

from __future__ import annotations

import ast
import importlib
import inspect
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

import triangle_nb as tnb
from triangle_nb.errors import InvalidArgumentError
from triangle_nb.options import RENAMED, VOCABULARY

ARROWS = ("reward_to_update", "update_to_reward", "prompt_to_update", "update_to_prompt", "prompt_to_reward",
          "reward_to_prompt")
ARROW_DIR = Path(tnb.__file__).parent / "arrows"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports (relative ones resolved inside triangle_nb.arrows), at any depth."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = {0: "", 1: "triangle_nb.arrows", 2: "triangle_nb"}[node.level]
            names.add(".".join(p for p in (base, node.module or "") if p))
            if node.module is None:
                names.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_arrow_module_imports_another_arrow():
    for arrow in ARROWS:
        imported = _imported_modules(ARROW_DIR / f"{arrow}.py")
        others = {f"triangle_nb.arrows.{a}" for a in ARROWS if a != arrow} | {f"triangle_nb.{a}" for a in ARROWS}
        assert not imported & others, f"{arrow} imports {sorted(imported & others)}"


def test_the_arrow_is_a_function_and_its_module_is_a_module():
    for arrow in ARROWS:
        module = importlib.import_module(f"triangle_nb.arrows.{arrow}")
        assert isinstance(module, types.ModuleType)
        assert getattr(tnb, arrow) is getattr(module, arrow) and callable(getattr(tnb, arrow))
        assert type(tnb) is types.ModuleType  # no module-class swap


# -- one vocabulary: every arrow takes the shared names, and the old spellings still work (warned) --------

XS = ["How was your day?", "Tell me about the sea.", "What is rain?", "Name a colour."]
Z = tnb.Prompt(system="You are a pirate. Say arr.")


def n_words(x: str, y: str) -> float:
    return float(len(y.split()))


@pytest.fixture(scope="module")
def shared():
    from triangle_nb.testing import tiny_policy

    return tiny_policy()


def _deprecated(call, old_names):
    """Run `call()` and return its result and the names the DeprecationWarnings asked for."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    asked = {str(w.message).split("=")[0] for w in caught if issubclass(w.category, DeprecationWarning)}
    assert set(old_names) <= asked, (old_names, [str(w.message) for w in caught])
    return out


def _pairs() -> dict[str, list[str]]:
    good = ["Wonderful, I loved it!", "Great news, thank you!", "What a lovely day.", "I am delighted."]
    bad = ["Awful, I hated it.", "Terrible news, how sad.", "What a miserable day.", "I am disappointed."]
    return {"prompt": [f"Q{i}" for i in range(8)], "chosen": good * 2, "rejected": bad * 2}


# (arrow call with the shared names, the same call with old spellings, old names, what must agree)
def _arrow_1(tiny, names):
    opts = {"samples": 2, "learning_rate": 0.05, "lora_r": 4} if names == "new" else {"n": 2, "lr": 0.05, "rank": 4}
    res = tnb.reward_to_update(tiny, tnb.rewards.Length(), XS, method="dpo", steps=1, batch_size=2, max_new_tokens=4,
                               eval_samples=1, eval_train=0, **opts)
    return res.metrics["reward_heldout_after"], res.history["loss"].tolist()


def _arrow_3(tiny, names):
    opts = ({"samples": 1, "learning_rate": 0.01, "method": "kl"} if names == "new"
            else {"samples_per_input": 1, "lr": 0.01, "objective": "kl"})
    res = tnb.prompt_to_update(tiny, Z, XS, steps=1, max_new_tokens=4, batch_size=2, **opts)
    return res.metrics["kl_heldout_after"], res.history["loss"].tolist()


def _arrow_4(tiny, names):
    opts = ({"samples": 1, "proposals": 1, "edits": 1} if names == "new"
            else {"samples_per_input": 1, "n_proposals": 1, "n_edits": 1})
    res = tnb.update_to_prompt(tiny.with_prompt(Z), tiny, XS, method="search", rounds=1, proposal_tokens=4,
                               max_new_tokens=4, **opts)
    return res.metrics["kl_heldout_after"], str(res.prompt)


def _arrow_5(tiny, names):
    opts = {"holdout": 0.25, "learning_rate": 3e-3} if names == "new" else {"test_fraction": 0.25, "lr": 3e-3}
    r = tnb.train_reward_model(_pairs(), steps=3, **opts)
    return r.metrics["accuracy_heldout_after"], r.history["loss"].tolist()


def _arrow_6(tiny, names):
    opts = ({"edits": 1, "beam": 2, "proposal_tokens": 4} if names == "new"
            else {"mutations": 1, "keep": 2, "propose_tokens": 4})
    res = tnb.reward_to_prompt(tiny, n_words, XS, rounds=1, proposals=1, samples=1, max_new_tokens=4, **opts)
    return res.metrics["reward_heldout_after"], res.history["prompt"].tolist()


def _arrow_6_conditioned(tiny, names):
    opts = {"tag_learning_rate": 0.02, "learning_rate": 0.01} if names == "new" else {"tag_lr": 0.02, "lr": 0.01}
    res = tnb.reward_to_prompt(tiny, n_words, XS, method="conditioned", bins=2, samples=2, steps=1, batch_size=2,
                               max_new_tokens=4, eval_samples=1, **opts)
    return res.metrics["spearman_heldout_after"], res.history["loss"].tolist()


WALK = {"reward_to_update": (_arrow_1, ["n", "lr", "rank"]),
        "prompt_to_update": (_arrow_3, ["samples_per_input", "lr", "objective"]),
        "update_to_prompt": (_arrow_4, ["samples_per_input", "n_proposals", "n_edits"]),
        "train_reward_model": (_arrow_5, ["test_fraction", "lr"]),
        "reward_to_prompt": (_arrow_6, ["mutations", "keep", "propose_tokens"]),
        "reward_to_prompt.conditioned": (_arrow_6_conditioned, ["tag_lr", "lr"])}


@pytest.mark.parametrize("arrow", list(WALK))
def test_every_arrow_takes_the_shared_names_and_the_old_ones_give_the_same_run(arrow):
    from triangle_nb.testing import tiny_policy

    run, old = WALK[arrow]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the shared names raise no deprecation
        new = run(tiny_policy(), "new")
    again = _deprecated(lambda: run(tiny_policy(), "old"), old)
    assert again == new or np.allclose(np.nan_to_num(again[0]), np.nan_to_num(new[0])) and again[1] == new[1]


def test_old_and_new_spelling_together_is_an_error(shared):
    with pytest.raises(InvalidArgumentError, match="lr is the old name of learning_rate"):
        tnb.reward_to_update(shared, tnb.rewards.Length(), XS, lr=0.1, learning_rate=0.1)
    with pytest.raises(InvalidArgumentError, match="unknown option"):
        tnb.reward_to_prompt(shared, n_words, XS, n_samples=2)


def test_every_searching_or_training_arrow_takes_config_callback_and_eval_inputs():
    for arrow in ("reward_to_update", "prompt_to_update", "update_to_prompt", "reward_to_prompt"):
        params = inspect.signature(getattr(tnb, arrow)).parameters
        assert {"config", "callback", "eval_inputs"} <= params.keys(), arrow
    assert "config" in inspect.signature(tnb.prompt_to_reward).parameters
    assert set(RENAMED.values()) <= set(VOCABULARY) | {"tag_learning_rate"}


def test_config_object_and_keywords_are_one_way(shared):
    """A config object plus keyword overrides builds the same config as the keywords alone."""
    from triangle_nb.arrows.reward_to_update import UpdateConfig

    seen = []
    res = tnb.reward_to_update(shared, tnb.rewards.Length(), XS, config=UpdateConfig(samples=2, batch_size=2, steps=3),
                               steps=1, max_new_tokens=4, eval_samples=1, eval_train=0, callback=seen.append)
    assert res.info["steps"] == 1 and res.info["samples"] == 2 and [r["step"] for r in seen] == [1]
    with pytest.raises(InvalidArgumentError, match="config must be a UpdateConfig"):
        tnb.reward_to_update(shared, tnb.rewards.Length(), XS, config={"steps": 1})


def test_the_split_is_seeded_shuffled_and_never_silently_empty(shared):
    from triangle_nb.splits import split_indices, split_inputs

    xs = [f"x{i}" for i in range(12)]
    train, held = split_inputs(xs, None, 0.25, seed=0)
    assert len(held) == 3 and sorted(train + held) == sorted(xs) and held != xs[-3:]  # shuffled, not the last third
    assert split_inputs(xs, None, 0.25, seed=0) == (train, held) and split_inputs(xs, None, 0.25, seed=1) != (train, held)
    assert split_indices(5, 0.0, 0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(InvalidArgumentError, match="holdout=0"):
        split_inputs(["only one"], None, 0.25, seed=0)
    res = tnb.prompt_to_update(shared, Z, XS, steps=1, samples=1, max_new_tokens=4, holdout=0)
    assert res.info["split"] == "train" and "kl_train_before" in res.metrics
    assert not any(k.startswith("kl_heldout") for k in res.metrics)


def test_results_carry_per_sample_rewards_and_load_by_kind(shared, tmp_path):
    res = tnb.reward_to_prompt(shared, n_words, XS, rounds=0, candidates=["Be brief."], samples=2, max_new_tokens=4)
    s = res.samples
    assert len(s) == 2 * res.metrics["n_heldout"] and {"reward_before", "reward_after"} <= set(s.columns)
    assert s["reward_after"].mean() == pytest.approx(res.metrics["reward_heldout_after"])
    assert list(s["reward_after"]) == [n_words(x, y) for x, y in zip(s["x"], s["after"], strict=True)]
    back = tnb.load(res.save(tmp_path / "search"))
    assert type(back) is type(res) and back.metrics == res.metrics and back.samples.equals(s)
    from triangle_nb.results import KINDS

    kinds = [cls.kind for cls in set(KINDS.values())]  # one kind per class, every arrow's result among them
    assert len(kinds) == len(set(kinds)) and {"reward_to_update", "prompt_to_update", "update_to_prompt",
                                              "reward_to_prompt.search", "reward_to_prompt.conditioned"} <= set(kinds)
    assert isinstance(tnb.load(tnb.rewards.Length().save(tmp_path / "r.json")), tnb.rewards.Length)


def test_results_saved_under_an_old_kind_still_load(shared, tmp_path):
    """Saves from before one kind per class ("prompt_search", "update", "prompt") open as their class."""
    import json

    res = tnb.reward_to_prompt(shared, n_words, XS, rounds=0, candidates=["Be brief."], samples=1, max_new_tokens=4)
    folder = res.save(tmp_path / "old")
    meta = json.loads((folder / "result.json").read_text())
    (folder / "result.json").write_text(json.dumps(meta | {"kind": "prompt_search"}))
    back = tnb.load(folder)
    assert type(back) is type(res) and back.prompt == res.prompt and back.metrics == res.metrics
    (folder / "result.json").write_text(json.dumps(meta | {"kind": "no_such_kind"}))
    with pytest.raises(Exception, match="unknown kind 'no_such_kind'"):
        tnb.load(folder)


def _public_callables() -> list[tuple[str, object]]:
    """Every public function and method of the package's public modules (tnb.*, presets, algebra, policies, rewards)."""
    from triangle_nb import algebra, autoregressive_reward, log_ratio, policy, presets, rewards

    seen: list[tuple[str, object]] = []
    for mod in (tnb, presets, algebra, policy, rewards, log_ratio, autoregressive_reward,
                *(importlib.import_module(f"triangle_nb.arrows.{a}") for a in ARROWS)):
        for name, obj in vars(mod).items():
            if name.startswith("_") or not callable(obj) or not getattr(obj, "__module__", "").startswith("triangle_nb"):
                continue
            seen.append((f"{mod.__name__}.{name}", obj))
            if inspect.isclass(obj):
                seen += [(f"{mod.__name__}.{name}.{m}", f) for m, f in vars(obj).items()
                         if not m.startswith("_") and inspect.isfunction(f)]
    return seen


def test_beta_is_keyword_only_in_every_public_call(tiny):
    """One rule for β (issue 25, point 4): `beta` (and `beta_r`) is keyword-only wherever it is taken; a positional β
    where one used to be accepted still works, with a DeprecationWarning naming beta=."""
    positional = []
    for name, fn in _public_callables():
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            continue
        positional += [name for p in params.values() if p.name in ("beta", "beta_r")
                       and p.kind is not inspect.Parameter.KEYWORD_ONLY and not inspect.isclass(fn)]
    assert positional == []
    with pytest.warns(DeprecationWarning, match="pass beta="):
        old = tnb.presets.cad(tiny, "The sky is green.", 3.0)
    assert old.label == tnb.presets.cad(tiny, "The sky is green.", beta=3.0).label == "CAD β=3"


def test_method_and_the_old_objective_make_one_bake_key(monkeypatch):
    """prompt_to_update(method="kl") and the deprecated objective="kl" are the same call to the bake layer (so the
    shipped runs, recorded with objective=, still serve method= calls), and DistillConfig's key writes `method` as
    `objective`, as it was keyed before the rename."""
    import triangle_nb.arrows.prompt_to_update as p2u
    from triangle_nb._keys import identity

    seen = []
    monkeypatch.setattr(p2u, "_distil_call", lambda *args, **kwargs: seen.append(kwargs))
    tnb.prompt_to_update(None, Z, XS, method="kl")
    with pytest.warns(DeprecationWarning, match="use method="):
        tnb.prompt_to_update(None, Z, XS, objective="kl")
    assert seen[0] == seen[1] and seen[0]["objective"] == "kl" and "method" not in seen[0]
    ident = identity(p2u.DistillConfig(method="imitation"))
    assert ident["objective"] == "imitation" and "method" not in ident
    with pytest.warns(DeprecationWarning, match="use method="):
        assert p2u.DistillConfig(objective="imitation") == p2u.DistillConfig(method="imitation")


def test_samples_is_the_one_name_for_responses_per_input(tiny):
    """`samples` everywhere (issue 25, point 4): every call that draws several responses per input names the count
    `samples` (`n` stays only as its deprecated old name), and pseudo_inputs counts what it makes by its config name."""
    from triangle_nb.arrows.prompt_to_update import pseudo_inputs

    for fn in (tnb.Policy.generate, tnb.Policy.generate_ids, tnb.BestOfN, tnb.rerank):
        params = inspect.signature(fn).parameters
        assert "samples" in params and ("n" not in params or params["n"].default is None), fn
    assert list(inspect.signature(pseudo_inputs).parameters)[2] == "n_pseudo_inputs"
    with pytest.warns(DeprecationWarning, match="use samples="):
        old = tnb.rerank(tiny, tnb.rewards.Length(), ["Hi"], n=2, max_new_tokens=3)
    assert old[0] == tnb.rerank(tiny, tnb.rewards.Length(), ["Hi"], samples=2, max_new_tokens=3)[0]
    with pytest.raises(InvalidArgumentError, match="n is the old name of samples"):
        tnb.BestOfN(tiny, tnb.rewards.Length(), samples=3, n=2)
