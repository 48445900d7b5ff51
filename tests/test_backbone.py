"""A Backbone shared by threads: forwards during another thread's training give their no-training numbers, a run's
own adapter and soft prompt are refused to other threads, and adapters and soft prompts can be unregistered."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import TrainerCallback

import triangle_nb as tnb
from triangle_nb.errors import AdapterMismatchError, BackboneBusyError, InvalidArgumentError
from triangle_nb.soft_prompt import SoftPrompt
from triangle_nb.testing import perturbed_adapter, tiny_policy

XS = ["Describe your morning.", "Tell me about rain.", "What about Mondays?", "How was the traffic?"]
YS = ["It was calm and bright.", "Rain is soft.", "Mondays are fine.", "Slow, as ever."]
WAIT = 60.0  # seconds an Event may take before the test fails (never reached when it works)
pytestmark = pytest.mark.usefixtures("one_thread")


def with_dropout(policy: tnb.Policy, p: float = 0.5) -> tnb.Policy:
    """Attention dropout on, so a forward that ran in train mode would give other (random) numbers."""
    for module in policy.backbone.base_model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = p
    return policy


def setup(seed: int = 0) -> tuple[tnb.Policy, tnb.Policy, tnb.Policy]:
    """(π0, π0 + a perturbed adapter, π0 with a soft prompt), the tiny model with dropout on."""
    pi0 = with_dropout(tiny_policy(seed))
    pert = perturbed_adapter(pi0, "pert")
    soft = pi0.with_prompt(SoftPrompt.create(pi0, torch.randn(2, 64, generator=torch.Generator().manual_seed(3))))
    return pi0, pert, soft


def numbers(policies: tuple[tnb.Policy, ...]) -> list[Any]:
    """What the main thread checks: summed log-probs and greedy generations of each policy."""
    out: list[Any] = []
    for p in policies:
        out += [p.logprobs(XS, YS).sum, p.generate(XS[:2], max_new_tokens=4)]
    return out


def assert_same(got: list[Any], expected: list[Any]) -> None:
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, np.ndarray):
            np.testing.assert_array_equal(g, e)  # eval-mode fp32 on CPU: bit-identical
        else:
            assert g == e


def test_another_threads_training_block_does_not_reach_this_threads_forward() -> None:
    """Thread A sits inside training(through_base=True) (train mode, adapters off); the main thread's forwards
    still run in eval mode with their adapters on, and A's next forward is in A's mode again."""
    pi0, pert, soft = setup()
    bb = pi0.backbone
    expected = numbers((pi0, pert, soft))
    batch = bb.tokenizer(["Hello there"], return_tensors="pt")
    inside, checked, seen = threading.Event(), threading.Event(), {}

    def trainer() -> None:
        with bb.training(through_base=True):
            inside.set()
            checked.wait(WAIT)
            with torch.no_grad():
                seen["a"] = bb.forward(batch.input_ids, batch.attention_mask, adapters=[None])[0]
                seen["b"] = bb.forward(batch.input_ids, batch.attention_mask, adapters=[None])[0]
            seen["training"] = bb.model.training

    thread = threading.Thread(target=trainer)
    thread.start()
    assert inside.wait(WAIT)
    assert bb.model.training  # A's mode is on the model ...
    assert_same(numbers((pi0, pert, soft)), expected)  # ... yet these forwards ran in eval mode
    checked.set()
    thread.join(WAIT)
    assert seen["training"] and not torch.equal(seen["a"], seen["b"])  # A's forwards: train mode, dropout on
    assert not bb.model.training
    assert_same(numbers((pi0, pert, soft)), expected)


class PauseAfterFirstStep(TrainerCallback):
    """Holds the run after its first step until the main thread has checked; then lets it finish."""

    def __init__(self) -> None:
        self.training, self.checked = threading.Event(), threading.Event()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 1:
            self.training.set()
            self.checked.wait(WAIT)


def train(method: str, pi0: tnb.Policy, callbacks: tuple[Any, ...] = ()) -> Any:
    """A short run of a training arrow on the tiny model: DPO (an adapter) or a soft prompt (arrow 4, through the
    base with the adapters off for the whole run)."""
    if method == "dpo":
        return tnb.reward_to_update(pi0, tnb.rewards.Length(), XS, method="dpo", steps=6, samples=2, max_new_tokens=4,
                                    batch_size=2, callbacks=list(callbacks))
    return tnb.update_to_prompt(pi0.with_prompt("Answer like a pirate."), pi0, XS, method="soft", steps=6, n_tokens=2,
                                max_new_tokens=4, batch_size=2, eval_batch_size=4, top_k=16, callbacks=list(callbacks))


def trained(method: str, res: Any) -> list[torch.Tensor]:
    if method == "dpo":
        tag = f".{res.policy.adapter}."
        return [p.detach().clone() for n, p in res.policy.backbone.model.named_parameters() if tag in n]
    return [res.prompt.vectors.detach().clone()]


@pytest.mark.parametrize("method", ["dpo", "soft"])
def test_forwards_while_a_job_trains_equal_the_idle_numbers(method: str) -> None:
    """The panels' case: a training job in a background thread, notebook calls in the main thread. The main
    thread's log-probs and generations equal those with nothing training, and the run trains what it trains alone."""
    pi0, pert, soft = setup()
    expected = numbers((pi0, pert, soft))
    pause, out = PauseAfterFirstStep(), {}
    job = threading.Thread(target=lambda: out.setdefault("res", train(method, pi0, (pause,))))
    job.start()
    assert pause.training.wait(WAIT), "the run never reached its first step"
    assert_same(numbers((pi0, pert, soft)), expected)  # between steps: the job's mode is on the model
    pause.checked.set()
    rounds = 0
    while job.is_alive():  # during the remaining steps: each forward waits for the step that holds the lock
        assert_same(numbers((pi0, pert, soft)), expected)
        rounds += 1
    job.join()
    assert rounds >= 1 and out["res"].history["step"].tolist() == [1, 2, 3, 4, 5, 6]
    alone_pi0, _, _ = setup()  # the same run with no other thread: the same trained tensors
    for got, want in zip(trained(method, out["res"]), trained(method, train(method, alone_pi0)), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_what_a_live_run_trains_is_refused_to_other_threads() -> None:
    pi0, pert, soft = setup()
    bb, vectors = pi0.backbone, soft.prompt.vectors
    inside, done, seen = threading.Event(), threading.Event(), {}

    def job() -> None:
        with bb.training_run("pert", [vectors]):
            seen["own"] = pert.logprobs(XS, YS).sum  # the run's own thread may use them
            inside.set()
            done.wait(WAIT)

    thread = threading.Thread(target=job)
    thread.start()
    assert inside.wait(WAIT)
    try:
        for call in (lambda: pert.logprobs(XS, YS), lambda: soft.generate(XS[:1], max_new_tokens=2),
                     lambda: bb.remove_adapter("pert"), lambda: bb.unregister_soft_tokens(soft.prompt.virtual_ids)):
            with pytest.raises(BackboneBusyError, match="wait for the panel's job or press Stop"):
                call()
        with pytest.raises(BackboneBusyError, match="already training adapter 'pert'"), bb.training_run("other"):
            pass
        pi0.logprobs(XS, YS)  # anything else runs
    finally:
        done.set()
        thread.join(WAIT)
    np.testing.assert_array_equal(pert.logprobs(XS, YS).sum, seen["own"])
    bb.remove_adapter("pert")  # free again once the run ended


def test_remove_adapter_frees_it_and_leaves_the_others() -> None:
    pi0 = tiny_policy()
    a, b = perturbed_adapter(pi0, "ad_a", seed=1), perturbed_adapter(pi0, "ad_b", seed=2)
    bb = pi0.backbone
    before_b, before_base = b.logprobs(XS, YS).sum, pi0.logprobs(XS, YS).sum
    probe = weakref.ref(next(p for n, p in bb.model.named_parameters() if ".ad_a." in n))
    bb.remove_adapter("ad_a")
    gc.collect()
    assert bb.adapters == ["ad_b"] and probe() is None
    assert not any(".ad_a." in n for n, _ in bb.model.named_parameters())
    np.testing.assert_array_equal(b.logprobs(XS, YS).sum, before_b)
    with pytest.raises(InvalidArgumentError, match="not loaded"):
        a.logprobs(XS, YS)
    with pytest.raises(InvalidArgumentError, match="no adapter of that name"):
        bb.remove_adapter("ad_a")
    bb.remove_adapter("ad_b")  # the last one: back to the plain model
    assert bb.adapters == [] and not isinstance(bb.model, PeftModel)
    np.testing.assert_array_equal(pi0.logprobs(XS, YS).sum, before_base)


def test_a_trained_adapter_is_freed_too() -> None:
    """Nothing of the Trainer (optimiser state, callbacks) keeps a removed adapter's weights alive."""
    pi0 = tiny_policy()
    res = tnb.reward_to_update(pi0, tnb.rewards.Length(), XS, method="dpo", steps=2, samples=2, max_new_tokens=4,
                               batch_size=2)
    name = res.policy.adapter
    probe = weakref.ref(next(p for n, p in pi0.backbone.model.named_parameters() if f".{name}." in n))
    pi0.backbone.remove_adapter(name)
    del res
    gc.collect()
    assert pi0.backbone.adapters == [] and probe() is None


def test_unregistered_soft_prompt_is_gone_and_the_others_unchanged() -> None:
    pi0 = tiny_policy()
    bb, gen = pi0.backbone, torch.Generator().manual_seed(5)
    first = SoftPrompt.create(pi0, torch.randn(3, 64, generator=gen))
    second_vectors = torch.randn(2, 64, generator=gen)
    second = SoftPrompt.create(pi0, second_vectors)
    bb.unregister_soft_tokens(first.virtual_ids)
    assert list(bb._soft) == [second.virtual_ids[0]]  # the embedding hook reads live soft prompts only
    alone = tiny_policy()  # the same weights, `second` the only soft prompt ever registered
    only = SoftPrompt.create(alone, second_vectors.clone())
    assert only.virtual_ids != second.virtual_ids
    np.testing.assert_array_equal(pi0.with_prompt(second).logprobs(XS, YS).sum,
                                  alone.with_prompt(only).logprobs(XS, YS).sum)
    with pytest.raises(AdapterMismatchError, match="never registered"):
        pi0.with_prompt(first).logprobs(XS[:1], YS[:1])
    with pytest.raises(InvalidArgumentError, match="virtual_ids"):
        bb.unregister_soft_tokens(first.virtual_ids)
    third = SoftPrompt.create(pi0, torch.randn(3, 64, generator=gen))
    assert min(third.virtual_ids) > max(second.virtual_ids)  # ids are never reused


def test_recording_collects_what_a_thread_registers_and_release_removes_it() -> None:
    pi0 = tiny_policy()
    bb = pi0.backbone
    kept = perturbed_adapter(pi0, "kept")
    with bb.recording() as made:
        perturbed_adapter(pi0, "mine")
        soft = SoftPrompt.create(pi0, torch.randn(2, 64))
        elsewhere = threading.Thread(target=lambda: perturbed_adapter(pi0, "theirs"))
        elsewhere.start()
        elsewhere.join()
    assert list(made.adapters) == ["mine"] and made.soft_prompts == [soft.virtual_ids]
    bb.release(made)
    assert bb.adapters == ["kept", "theirs"] and bb._soft == {}
    bb.release(made)  # what is gone already is skipped
    perturbed_adapter(pi0, "mine")  # a new adapter under a released name is not the recorded one
    bb.release(made)
    assert bb.adapters == ["kept", "theirs", "mine"] and kept.logprobs(XS[:1], YS[:1]).sum.shape == (1,)


def test_removing_the_active_adapter_beside_one_on_other_modules(tiny):
    """PEFT leaves a deleted adapter active when the remaining one wraps other modules; the backbone repairs it."""
    from triangle_nb.backbone import default_lora_config

    bb = tiny.backbone
    bb.add_adapter("mlp", default_lora_config(targets=("up_proj", "down_proj")))
    bb.add_adapter("qv", default_lora_config())
    bb.model.set_adapter("qv")
    bb.remove_adapter("qv")
    assert bb.adapters == ["mlp"] and bb.model.active_adapter == "mlp"
    assert tiny.generate(["Hi"], max_new_tokens=3) == tiny.with_adapter("mlp").without_adapter().generate(["Hi"], max_new_tokens=3)
