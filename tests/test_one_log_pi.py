"""One log π path (issue 25, point 2): every caller that scores responses — policies, rewards, training losses,
distillation — gives, for every kind of policy, the numbers of one unpadded forward over the whole sequence."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from triangle_nb import _distill, scoring, training
from triangle_nb.arrows import reward_to_update as r2u
from triangle_nb.arrows.prompt_to_reward import ContrastiveReward
from triangle_nb.autoregressive_reward import _sequence_logps
from triangle_nb.chat import pair_batch
from triangle_nb.log_ratio import LogRatioReward, joint_logprobs
from triangle_nb.policy import Policy
from triangle_nb.prompt import EMPTY
from triangle_nb.soft_prompt import SoftPrompt
from triangle_nb.testing import perturbed_adapter, tiny_policy

XS = ["Tell me about rain.", "Tell me about rain.", "Describe a cat in a few words.", "What is tea?"]
YS = ["Rain is wet and it falls.", "It is cold.", "A cat purrs.", "Tea is a drink made from leaves, hot or cold."]
KINDS = ("base", "prompt", "adapter", "exit_layer", "soft_prompt")


@pytest.fixture(scope="module")
def policies() -> dict[str, Policy]:
    pi0 = tiny_policy(seed=11)
    star = perturbed_adapter(pi0, "star", scale=0.3, seed=2)
    soft = SoftPrompt.create(pi0, torch.randn(3, 64, generator=torch.Generator().manual_seed(5)))
    return {"base": pi0, "prompt": pi0.with_prompt("Answer like a pirate."), "adapter": star,
            "exit_layer": star.at_layer(1), "soft_prompt": pi0.with_prompt(soft)}


def reference(policy: Policy, xs: list[str], ys: list[str]) -> list[np.ndarray]:
    """log π(y_t | x, y_<t) from one forward per pair over prompt + response, no padding, no cache."""
    bb, out = policy.backbone, []
    for p, r in scoring.encode_rows(policy, xs, ys):
        ids = torch.tensor([p + r])
        with torch.inference_mode():
            logits, _ = bb.forward(ids, torch.ones_like(ids), adapters=[policy.adapter], exit_layers=[policy.exit_layer])
        logp = torch.log_softmax(logits[0, len(p) - 1 : len(p) + len(r) - 1], dim=-1)
        out.append(logp.gather(-1, torch.tensor(r)[:, None]).squeeze(-1).double().numpy())
    return out


def _rows(policy: Policy) -> list[tuple[list[int], list[int]]]:
    return scoring.encode_rows(policy, XS, YS)


def _masked(lp: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    return [row[m].detach().double().numpy() for row, m in zip(lp.cpu(), mask.cpu(), strict=True)]


def _callers(policy: Policy) -> dict[str, list[np.ndarray] | np.ndarray]:
    """Every caller's per-token log π (or, where a caller only returns a sum or a mean, that)."""
    bb, rows = policy.backbone, _rows(policy)
    batch = pair_batch(rows, bb.pad_id)
    train_lp, train_mask = r2u._train_logps(policy, rows)
    dist = _distill.response_logps(policy, batch).detach()
    out: dict[str, list[np.ndarray] | np.ndarray] = {
        "policy.logprobs (shared prompts)": policy.logprobs(XS, YS).per_token,
        "policy.logprobs (one prompt each)": policy.logprobs(XS[1:], YS[1:]).per_token,
        "joint_logprobs (mixed batch)": joint_logprobs([policy, policy.without_adapter()], XS, YS)[0].per_token,
        "reward_to_update._logps": r2u._logps(policy, rows),
        "reward_to_update._train_logps": _masked(train_lp, train_mask),
        "_distill.response_logps": dist.gather(-1, _distill.targets(batch)[:, None]).squeeze(-1).double().numpy(),
        "scoring.response_nll": np.array(float(scoring.response_nll(bb, batch, policy.adapter, policy.exit_layer))),
    }
    with bb.training():
        out["training.sft_loss"] = np.array(float(training.sft_loss(bb, policy.adapter, rows)([0, 1, 2, 3], 0)[0])) \
            if policy.exit_layer is None else out["scoring.response_nll"]
    if policy.exit_layer is None:
        out["autoregressive_reward._sequence_logps"] = _sequence_logps(bb, policy.adapter, rows).detach().double().numpy()
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_caller_equals_the_full_sequence_forward(policies: dict[str, Policy], kind: str) -> None:
    policy = policies[kind]
    ref = reference(policy, XS, YS)
    flat = np.concatenate(ref)
    for caller, got in _callers(policy).items():
        if caller.endswith("(one prompt each)"):
            expected: object = ref[1:]
        elif caller in ("reward_to_update._logps", "autoregressive_reward._sequence_logps"):
            expected = np.array([r.sum() for r in ref])
        elif caller == "_distill.response_logps":
            expected = flat
        elif caller in ("scoring.response_nll", "training.sft_loss"):
            expected = np.array(-flat.mean())
        else:
            expected = ref
        if isinstance(expected, list):
            assert [len(g) for g in got] == [len(e) for e in expected], caller
            got, expected = np.concatenate(got), np.concatenate(expected)
        np.testing.assert_allclose(got, expected, atol=2e-4, rtol=0, err_msg=f"{kind}: {caller}")


@pytest.mark.parametrize("kind", ["base", "adapter", "exit_layer"])
def test_the_rewards_are_differences_of_the_full_sequence_forward(policies: dict[str, Policy], kind: str) -> None:
    policy, z = policies[kind], "Answer like a pirate."
    plus, minus = reference(policy.with_prompt(z), XS, YS), reference(policy.with_prompt(EMPTY), XS, YS)
    contrastive = ContrastiveReward(policy, z, EMPTY)
    assert isinstance(contrastive, LogRatioReward)  # Eq. 15 is Eq. 4 with two prompted policies and β = 1
    np.testing.assert_allclose(contrastive(XS, YS), [a.sum() - b.sum() for a, b in zip(plus, minus)], atol=5e-4)
    np.testing.assert_allclose(contrastive.token_scores(XS[2], YS[2]).scores, plus[2] - minus[2], atol=2e-4)
    star, base = policies[kind], policies["base"]
    implicit = LogRatioReward(star, base, beta=0.5)
    want = [0.5 * (a.sum() - b.sum()) for a, b in zip(reference(star, XS, YS), reference(base, XS, YS))]
    np.testing.assert_allclose(implicit(XS, YS), want, atol=5e-4)


PACKAGE = Path(__file__).resolve().parents[1] / "triangle_nb"
FORWARDS = {"scoring.py", "decoding.py"}  # the log π path and the sampler; the rest score through scoring


def test_only_the_log_pi_path_and_the_sampler_run_scoring_forwards() -> None:
    """A response is scored in scoring.py only: no other module calls a backbone's forward itself."""
    callers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "forward" \
                    and ast.unparse(node.func.value).endswith(("bb", "backbone")) and path.name not in FORWARDS:
                callers.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node.func)}")
    assert callers == []


def test_the_training_view_of_a_policy_is_the_policy(policies: dict[str, Policy]) -> None:
    """reward_to_update trains π* = π0 with a new adapter: its loss scores through π*'s exit layer and prompt ids."""
    star = dataclasses.replace(policies["exit_layer"], adapter="star")
    lp, mask = r2u._token_logps(star, _rows(star))
    np.testing.assert_allclose(np.concatenate(_masked(lp, mask)), np.concatenate(reference(star, XS, YS)), atol=2e-4)
