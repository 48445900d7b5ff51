"""The prompt ⇒ LoRA hypernetwork (triangle_nb.hypernetwork, issue 27) on the tiny model: the adapter it installs
is exactly the per-row adapter it trains through, its training is Eq. 9 and touches only H, it saves and loads
exactly, and bad input gets typed errors."""

import pytest
import torch

import triangle_nb as tnb
from triangle_nb import hypernetwork as H
from triangle_nb._distill import response_logps, token_kl, view_batch
from triangle_nb.errors import AdapterMismatchError, InvalidArgumentError, ModelLoadError

XS = ["Hi there", "What is rain?", "Tell me a joke", "How are you?", "Why is the sky blue?"]
ZS = ["You are a pirate.", "Answer in French.", "Be very sad.", "Use emojis."]
SMALL = {"max_new_tokens": 6, "inputs_per_prompt": 2, "hidden": 16, "lora_r": 4}


@pytest.fixture(scope="module")
def shared():
    from triangle_nb.testing import tiny_policy

    return tiny_policy(seed=3)


def random_network(policy, seed=0, **options):
    """A network whose basis B and head are non-zero, so that every prompt gets its own non-zero adapter."""
    net = H.new_network(policy, H.HyperConfig(**(SMALL | options)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return net


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_installed_adapter_equals_the_per_row_training_path(shared, family):
    """Two prompts in one batch through the hooks == each prompt's installed PEFT adapter alone (three families)."""
    from triangle_nb.testing import tiny_policy

    policy = shared if family == "llama" else tiny_policy(seed=5, family=family)
    _per_row_equals_installed(policy, random_network(policy))


def _per_row_equals_installed(policy, net):
    rows = H.TeacherRows(policy, ZS[:2], [XS[:2], XS[2:4]], H.HyperConfig(**SMALL))
    pairs, _, _, of = rows.rows([0, 1])
    bb = policy.backbone
    with torch.no_grad():
        with H.row_adapters(net, bb, net.gates(H.encode(ZS[:2])[of])):
            mixed = response_logps(policy.without_adapter(), view_batch(pairs, bb, teacher=False))
        alone = []
        for k, z in enumerate(ZS[:2]):
            pol = H.install(net, policy, z)
            mine = [p for p, o in zip(pairs, of) if o == k]
            alone.append(response_logps(pol, view_batch(mine, bb, teacher=False)))
            bb.remove_adapter(pol.adapter)
        base = response_logps(policy.without_adapter(), view_batch(pairs, bb, teacher=False))
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=1e-4, atol=1e-5)
    assert (mixed - base).abs().max() > 1e-3  # the adapters do something


def test_training_is_eq9_and_changes_only_the_network(shared):
    named = dict(shared.backbone.base_model.named_parameters())
    base = {n: p.detach().clone() for n, p in named.items()}
    flags = {n: p.requires_grad for n, p in named.items()}
    res = tnb.train_hypernetwork(shared, prompts=ZS, inputs=XS, steps=2, **SMALL)
    for n, p in shared.backbone.base_model.named_parameters():
        assert torch.equal(p, base[n]), n
        assert p.requires_grad == flags[n], n  # the flags are put back
    fresh = H.new_network(shared, H.HyperConfig(**SMALL))
    assert any(not torch.equal(a, b) for a, b in zip(res.network.parameters(), fresh.parameters()))
    # step 1 starts from ΔW = 0 (B = 0): its loss is Eq. 9's KL[π0(·|x,z) ‖ π0(·|x)] on the first batch's pairs
    cfg = H.HyperConfig(**SMALL)
    zs, xs = H._family(ZS, XS, cfg)
    rows = H.TeacherRows(shared, zs, xs, cfg)
    first = _first_batch(len(zs), cfg)
    pairs, t_logp, t_idx, _ = rows.rows(first)
    with torch.no_grad():
        gap = token_kl(t_logp, t_idx, response_logps(shared.without_adapter(), view_batch(pairs, shared.backbone,
                                                                                           teacher=False))).mean()
    assert res.history["loss"].iloc[0] == pytest.approx(float(gap), rel=1e-4)
    assert res.metrics["steps"] == 2 and res.metrics["n_prompts"] == 4


def _first_batch(n, cfg):
    """The Trainer's first batch of item indices (its seeded random sampler)."""
    from torch.utils.data import RandomSampler

    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    return list(RandomSampler(range(n), generator=gen))[: cfg.batch_size]


def test_save_load_roundtrip(shared, tmp_path):
    net = random_network(shared, seed=1)
    e = H.encode(ZS)
    loaded = H.HyperNetwork.load(net.save(tmp_path / "net"))
    assert torch.equal(loaded.gates(e), net.gates(e)) and loaded.meta() == net.meta()
    res = H.HyperNetworkResult(metrics={"steps": 1}, info={"method": "hypernetwork"}, network=net)
    back = tnb.load(res.save(tmp_path / "result"))
    assert isinstance(back, H.HyperNetworkResult) and torch.equal(back.network.gates(e), net.gates(e))


def test_prompt_to_update_hypernetwork(shared, tmp_path):
    net = random_network(shared, seed=2)
    res = tnb.prompt_to_update(shared, "You are a pirate.", XS, method="hypernetwork", network=net,
                               max_new_tokens=6)
    m = res.metrics
    assert res.info["method"] == "hypernetwork" and res.policy.adapter in shared.backbone.adapters
    assert m["kl_heldout_before"] > 0 and m["kl_heldout_after"] != m["kl_heldout_before"]  # the adapter is used
    assert "steps" not in m and res.history.empty  # nothing trained
    back = tnb.load(res.save(tmp_path / "r"), base=shared)
    x = ["Tell me about rain."]
    assert back.policy.generate(x, max_new_tokens=5) == res.policy.generate(x, max_new_tokens=5)
    alone = tnb.prompt_to_update(shared, "You are a pirate.", method="hypernetwork", network=net)
    assert "kl_heldout_after" not in alone.metrics  # no inputs: the adapter only


@pytest.mark.parametrize("prompt, kwargs, error, words", [
    ("", {}, InvalidArgumentError, "empty"),
    ("   ", {}, InvalidArgumentError, "empty"),
    (["a", "b"], {}, InvalidArgumentError, "one prompt"),
    ("z", {"network": "net.safetensors"}, InvalidArgumentError, "HyperNetwork"),
])
def test_bad_input(shared, prompt, kwargs, error, words):
    with pytest.raises(error, match=words):
        tnb.prompt_to_update(shared, prompt, method="hypernetwork", **({"network": random_network(shared)} | kwargs))


def test_bad_methods_and_missing_inputs(shared):
    with pytest.raises(InvalidArgumentError, match="inputs is missing"):
        tnb.prompt_to_update(shared, "z")
    with pytest.raises(InvalidArgumentError, match="method='hyper'"):
        tnb.prompt_to_update(shared, "z", XS, method="hyper")
    with pytest.raises(InvalidArgumentError, match="disagree"):
        tnb.prompt_to_update(shared, "z", XS, method="kl", objective="imitation")
    with pytest.raises(ModelLoadError, match="python -m triangle_nb.hypernetwork"):  # nothing shipped for the tiny base
        tnb.prompt_to_update(shared, "z", method="hypernetwork")


def test_another_base_is_refused(shared):
    from triangle_nb.testing import tiny_policy

    other = tiny_policy(seed=4)
    with pytest.raises(AdapterMismatchError, match="tiny-llama-3"):
        H.install(random_network(shared), other, "You are a pirate.")


def test_missing_or_corrupt_network_names_the_command(shared, tmp_path):
    with pytest.raises(ModelLoadError, match="python -m triangle_nb.hypernetwork"):
        H.HyperNetwork.load(tmp_path / "nothing")
    folder = random_network(shared).save(tmp_path / "net")
    (folder / H.NETWORK_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="damaged.*python -m triangle_nb.hypernetwork"):
        H.HyperNetwork.load(folder)


def test_long_prompt_is_cut_with_a_warning():
    with pytest.warns(UserWarning, match=r"reads the first \d+ \(\d+ cut\)"):
        H.encode(["word " * 400])


def test_targets_keep_their_gates_after_save_and_load(shared, tmp_path):
    """JSON sorts keys: the gate order (up before down here) must survive a save, or gates feed the wrong projection."""
    net = random_network(shared, seed=6, lora_targets=("up_proj", "down_proj"))
    loaded = H.HyperNetwork.load(net.save(tmp_path / "net"))
    assert loaded.targets == ["up_proj", "down_proj"]
    x = ["Tell me about rain."]
    a = H.install(net, shared, "You are a pirate.").logprobs(x, ["Arr, rain."]).sum
    b = H.install(loaded, shared, "You are a pirate.").logprobs(x, ["Arr, rain."]).sum
    assert a == pytest.approx(b, abs=1e-6)


def test_bfloat16_rows_keep_the_models_dtype(shared):
    """The hook computes in H's dtype and adds in the model's: a bf16 residual stream stays bf16."""
    net = random_network(shared)
    lin = H.target_linears(shared.backbone, net.targets)[(0, "q_proj")]
    gates = net.gates(H.encode(ZS[:1]))
    x = torch.randn(1, 3, lin.in_features, dtype=torch.bfloat16)
    with torch.no_grad(), H.row_adapters(net, shared.backbone, gates):
        out = lin.to(torch.bfloat16)(x)
    lin.float()
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_loading_leaves_the_users_random_stream_alone(shared, tmp_path):
    folder = random_network(shared).save(tmp_path / "net")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    H.HyperNetwork.load(folder)
    assert torch.equal(torch.rand(3), expected)


def test_training_settings_and_unusable_prompts_are_refused(shared):
    net = random_network(shared)
    with pytest.raises(InvalidArgumentError, match=r"trains nothing, so \['steps'\]"):
        tnb.prompt_to_update(shared, "z", method="hypernetwork", network=net, steps=5)
    with pytest.raises(InvalidArgumentError, match="few-shot examples"):
        tnb.prompt_to_update(shared, tnb.Prompt(examples=[("a", "b")]), method="hypernetwork", network=net)
    with pytest.raises(InvalidArgumentError, match="without an adapter"):
        tnb.prompt_to_update(H.install(net, shared, "z"), "You are a pirate.", method="hypernetwork", network=net)
    with pytest.raises(InvalidArgumentError, match="network= is for method='hypernetwork'"):
        tnb.prompt_to_update(shared, "z", XS, network=net)
    with pytest.raises(InvalidArgumentError, match="temperature=0"):
        H.HyperConfig(temperature=0)
    with pytest.raises(InvalidArgumentError, match="not one string"):
        tnb.train_hypernetwork(shared, prompts="You are a pirate.", inputs=XS, steps=1)
