"""Prompt ⇒ update in one forward (survey §4.2, "Direct Transformation with Hyper-networks"): a small network H maps
a system prompt z to a LoRA adapter on π0, trained once by context distillation over a generated family of
prompts, so that π_{H(z)}(·|x) ≈ π0(·|x, z) — also for prompts it never saw — without minutes of training per prompt.

The design, and why:
- **Encoder:** the frozen MiniLM sentence encoder (all-MiniLM-L6-v2, shipped on PyPI): 384 numbers per prompt that
  place paraphrases and related personas near each other, which is what lets H answer prompts it never saw.
- **Generator:** Text-to-LoRA (Charakorn et al., ICML 2025) emits A and B of every (layer, module) from the prompt
  embedding and learned layer/module embeddings, after days of GPU training on 2-8B models. Here that output would
  be 0.9 M numbers per adapter, learned from a few hundred prompts on one CPU core: it cannot generalise. H instead
  learns one basis per (layer l, module m) shared by all prompts — A_lm [r, d_in], B_lm [d_out, r] — and emits
  only r gates per (layer, module) from z:

      ΔW_lm(z) = (α / r) · B_lm · diag(g_lm(z)) · A_lm,    g(z) = 1 + head(MLP(e(z)))

  The basis holds the directions in which prompts move the model; the gates (60 · r numbers) say how far this
  prompt moves it along each. The adapter it makes is an ordinary rank-r PEFT LoRA (lora_A = diag(g) A,
  lora_B = B, alpha = 2 r), usable wherever a distilled adapter is (generate, logprobs, Eq. 7, save / load).
- **Training (Eq. 9):** min_H E_z E_{x, y ~ π0(·|x,z)} Σ_t KL[π0(·|x,z,y<t) ‖ π_{H(z)}(·|x,y<t)] on the teacher's
  top-k distributions, through the training engine (`transformers.Trainer`: checkpoints, exact resume); during
  training the per-row adapters run as forward hooks on the base projections (each row of a batch is another
  prompt). Teacher rows are sampled for a group of 8 prompts (seeded per group) when a batch first needs one of
  them, so the first steps of a run need only their own groups (the provenance test reruns them).

No library has this: PEFT has no prompt-conditioned adapters, and T2L's code is a research repository tied to its
own models and GPU training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import _io, _prompt_family, _replay, training
from . import _validate as check
from ._bakery import bakeable, lookup, store_as
from ._distill import Pair, cache_teacher, response_logps, token_kl, view_batch
from .backbone import default_lora_config
from .chat import prompt_ids
from .errors import AdapterMismatchError, InvalidArgumentError, ModelLoadError
from .policy import Policy
from .prompt import EMPTY, Prompt
from .results import ArrowResult

__all__ = ["HyperConfig", "HyperNetwork", "HyperNetworkResult", "default_network", "train_hypernetwork"]

ENCODER = "all-MiniLM-L6-v2"
EMBED_DIM = 384
NETWORK_FILE = "network.safetensors"
NETWORK_META = "network.json"
REBUILD_COMMAND = "python -m triangle_nb.hypernetwork"


@dataclass(frozen=True, kw_only=True)
class HyperConfig(training.TrainConfig):
    """Settings of the hypernetwork's training (the shared training fields are `training.TrainConfig`'s; one
    training item is one prompt with all its pairs, so batch_size = 2 is 2 prompts × inputs_per_prompt rows).

    Args:
        lora_r: rank r of the adapters H makes (the basis size per layer and module).
        hidden: width of H's MLP on the prompt embedding.
        inputs_per_prompt: training inputs x per prompt (each with one teacher sample y ~ π0(·|x, z)).
        max_new_tokens: length of each teacher sample.
        temperature: sampling temperature of the teacher samples.
        top_k: the teacher's top-k tokens kept per position (+ one bucket for the rest), Eq. 9 on that.
        weight_decay: AdamW weight decay on H (a few hundred prompts: keep the head small).
    """

    steps: int = 400
    batch_size: int = 2
    learning_rate: float = 2e-3
    lora_r: int = 16
    hidden: int = 256
    inputs_per_prompt: int = 4
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_k: int = 32
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("hidden", "inputs_per_prompt", "max_new_tokens", "top_k"):
            check.positive_int(getattr(self, name), name)
        object.__setattr__(self, "temperature", check.temperature(self.temperature))
        if self.temperature == 0:
            raise InvalidArgumentError("temperature=0: the teacher's samples must be drawn from π0(·|x, z); use "
                                       "temperature=1.0 (the default).")
        check.non_negative(self.weight_decay, "weight_decay")


# -- the network -------------------------------------------------------------------------------------
class HyperNetwork(torch.nn.Module):
    """H: prompt embedding e(z) [N, 384] -> gates g [N, L, M, r] over a learned LoRA basis per (layer, module)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], layers: int, rank: int, hidden: int,
                 base: dict[str, Any]) -> None:
        super().__init__()
        self.shapes, self.layers, self.rank, self.hidden, self.base = dict(shapes), layers, rank, hidden, dict(base)
        self.provenance = "built in this session"  # a shipped one says where it was trained (default_network)
        self.targets = list(self.shapes)  # gate slot j of a layer feeds projection targets[j] (kept in network.json)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(EMBED_DIM, hidden), torch.nn.GELU(),
                                         torch.nn.Linear(hidden, hidden), torch.nn.GELU())
        self.head = torch.nn.Linear(hidden, layers * len(shapes) * rank)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)  # g = 1 at the start: one shared adapter, then prompt by prompt
        self.A = torch.nn.ParameterDict({m: torch.nn.Parameter(
            torch.empty(layers, rank, d_in).uniform_(-d_in ** -0.5, d_in ** -0.5)) for m, (d_in, _) in shapes.items()})
        self.B = torch.nn.ParameterDict({m: torch.nn.Parameter(torch.zeros(layers, d_out, rank))
                                         for m, (_, d_out) in shapes.items()})  # ΔW = 0 at the start, as LoRA

    @property
    def scale(self) -> float:
        return 2.0  # alpha / r with alpha = 2 r (the one LoRA rule of triangle_nb)

    def gates(self, e: torch.Tensor) -> torch.Tensor:
        """g(z) = 1 + head(MLP(e(z))): [N, L, M, r]."""
        return 1.0 + self.head(self.trunk(e)).view(len(e), self.layers, len(self.shapes), self.rank)

    def lora_weights(self, e: torch.Tensor) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        """One prompt's adapter: (layer, module) -> (lora_A = diag(g) A [r, d_in], lora_B = B [d_out, r])."""
        g = self.gates(e[None])[0]
        return {(layer, m): (g[layer, j, :, None] * self.A[m][layer], self.B[m][layer])
                for layer in range(self.layers) for j, m in enumerate(self.targets)}

    def meta(self) -> dict[str, Any]:
        return {"kind": "hypernetwork", "encoder": ENCODER, "targets": self.targets,
                "shapes": {m: list(s) for m, s in self.shapes.items()},
                "layers": self.layers, "rank": self.rank, "hidden": self.hidden, "base": self.base}

    def save(self, folder: str | Path) -> Path:
        """Write the network (safetensors + network.json) into `folder` atomically."""
        folder = Path(folder)
        with _io.atomic_dir(folder) as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp / NETWORK_FILE))
            _io.write_json(tmp / NETWORK_META, self.meta())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> HyperNetwork:
        """Read a network saved by `save` (safetensors only)."""
        folder = Path(folder)
        meta_path, weights = folder / NETWORK_META, folder / NETWORK_FILE
        if not meta_path.is_file() or not weights.is_file():
            raise ModelLoadError(f"no hypernetwork in {str(folder)!r} ({NETWORK_META} and {NETWORK_FILE} expected): "
                                 f"train one with `{REBUILD_COMMAND}`.")
        meta = _io.read_json(meta_path)
        try:
            if meta.get("kind") != "hypernetwork" or meta.get("encoder") != ENCODER:
                raise ValueError(f"kind {meta.get('kind')!r} with encoder {meta.get('encoder')!r}")
            order = meta.get("targets", list(meta["shapes"]))  # JSON sorts keys: the gate order is kept apart
            shapes = {m: (int(meta["shapes"][m][0]), int(meta["shapes"][m][1])) for m in order}
            with torch.random.fork_rng(devices=[]):  # building draws random initial weights: not from the user's stream
                net = cls(shapes, int(meta["layers"]), int(meta["rank"]), int(meta["hidden"]), meta["base"])
            net.load_state_dict(load_file(str(weights)))
        except (KeyError, TypeError, RuntimeError, OSError, ValueError, AttributeError, SafetensorError) as exc:
            raise ModelLoadError(f"the hypernetwork in {str(folder)!r} is damaged ({exc}): train it again with "
                                 f"`{REBUILD_COMMAND}`.") from exc
        return net.eval()

    def check_base(self, policy: Policy) -> None:
        """Refuse a base model other than the one H was trained for."""
        from ._keys import base_identity

        mine = base_identity(policy.backbone)
        same_dtype = mine.get("dtype") == self.base.get("dtype")  # the weights digest is of the weights in that dtype
        if _shape(self.base) != _shape(mine) or (same_dtype and mine.get("weights") != self.base.get("weights")):
            raise AdapterMismatchError(f"this hypernetwork was trained for base model {self.base.get('name')!r} "
                                       f"({_shape_text(self.base)}), not {mine['name']!r} ({_shape_text(mine)}"
                                       f"{'' if _shape(self.base) != _shape(mine) else ', other weights'}): use it "
                                       "with the base it was trained for, or train one for this base with "
                                       f"`{REBUILD_COMMAND}`.")


def _shape(base: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in base.items() if k not in ("weights", "dtype")}


def _shape_text(base: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in base.items() if k not in ("name", "weights"))


def new_network(policy: Policy, cfg: HyperConfig) -> HyperNetwork:
    """A fresh H for `policy`'s base (seeded): one basis per layer for each of `cfg.lora_targets`."""
    from ._keys import base_identity

    linears = target_linears(policy.backbone, cfg.lora_targets)
    shapes = {m: (lin.in_features, lin.out_features) for (layer, m), lin in linears.items() if layer == 0}
    with training.seeded(cfg.seed):
        return HyperNetwork(shapes, policy.backbone.num_layers, cfg.lora_r, cfg.hidden,
                            base_identity(policy.backbone))


def target_linears(backbone: Any, targets: Sequence[str]) -> dict[tuple[int, str], torch.nn.Linear]:
    """The decoder layers' projections named `targets`, by (layer, name) (inside PEFT's wrappers when present); every
    layer must have each of them, with layer 0's shape (H's basis is one tensor per projection)."""
    found: dict[tuple[int, str], torch.nn.Linear] = {}
    for layer, block in enumerate(_decoder_layers(backbone)):
        for name, module in block.named_modules():
            leaf = name.removesuffix(".base_layer").rsplit(".", 1)[-1]
            if isinstance(module, torch.nn.Linear) and leaf in targets:
                found[(layer, leaf)] = module
    first = {t: found.get((0, t)) for t in targets}
    bad = sorted({t for (layer, t) in [(i, t) for i in range(len(_decoder_layers(backbone))) for t in targets]
                  if (layer, t) not in found or first[t] is None or found[(layer, t)].weight.shape != first[t].weight.shape})
    if bad:
        raise InvalidArgumentError(f"lora_targets {bad} are not linear layers of the same shape in every decoder layer "
                                   f"of {backbone.name!r}: use projection names every layer has, e.g. ('q_proj', 'v_proj').")
    return found


def _decoder_layers(backbone: Any) -> list[torch.nn.Module]:
    base = backbone.base_model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InvalidArgumentError(f"model {backbone.name!r} ({type(base).__name__}) has no list of decoder layers "
                                   "triangle_nb can find (decoder.layers): the hypernetwork supports Llama, Qwen2, Gemma "
                                   "and similar families.")
    return list(layers)


@contextlib.contextmanager
def row_adapters(net: HyperNetwork, backbone: Any, gates: torch.Tensor) -> Iterator[None]:
    """Inside the block, row i of every forward runs through its own generated adapter (gates[i]): a hook on each
    base projection adds (α/r) · B (g_i ⊙ A x) — what PEFT computes for the installed adapter."""
    def hook(layer: int, j: int, m: str) -> Callable[..., torch.Tensor]:
        def add(module: Any, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
            a, b = net.A[m][layer], net.B[m][layer]
            h = (args[0].to(a.dtype) @ a.T) * gates[:, layer, j, None, :]  # [N, T, r], in H's dtype
            return out + (net.scale * (h @ b.T)).to(out.dtype)  # the model's residual stream keeps its dtype
        return add

    index = {m: j for j, m in enumerate(net.targets)}
    handles = [lin.register_forward_hook(hook(layer, index[m], m))
               for (layer, m), lin in target_linears(backbone, net.targets).items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# -- the encoder -------------------------------------------------------------------------------------
def encode(prompts: Sequence[str]) -> torch.Tensor:
    """e(z): the normalised MiniLM embeddings of the prompts' text [N, 384]; a prompt longer than the encoder
    reads is cut, with a warning that says by how much."""
    from .rewards import minilm_encoder

    enc = minilm_encoder()
    limit = int(enc.max_seq_length)
    for i, z in enumerate(prompts):
        n = len(enc.tokenizer(z, add_special_tokens=True)["input_ids"])
        if n > limit:
            warnings.warn(f"prompt[{i}] has {n} encoder tokens; the hypernetwork's encoder reads the first {limit} "
                          f"({n - limit} cut): put what matters first, or shorten it.", UserWarning, stacklevel=3)
    with torch.inference_mode():
        e = enc.encode(list(prompts), convert_to_tensor=True, normalize_embeddings=True, batch_size=32)
    return e.detach().float().cpu().clone()


def prompt_text(z: Prompt | str, name: str = "prompt") -> str:
    """The text H reads: the prompt's system text (refused when empty, or when z holds examples H cannot read)."""
    if isinstance(z, Prompt) and z.examples:
        raise InvalidArgumentError(f"{name} holds few-shot examples: the hypernetwork reads system text only. Put the "
                                   "instruction in Prompt(system=...), or distil the examples (method='kl').")
    text = z.system_text() if isinstance(z, Prompt) else z
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError(f"{name} is empty: the hypernetwork maps a system prompt's text to an adapter; pass "
                                   "the text of z, e.g. 'You are a pirate captain.'.")
    return text


# -- one prompt -> its adapter ------------------------------------------------------------------------
def install(net: HyperNetwork, policy: Policy, z: Prompt | str) -> Policy:
    """π_{H(z)}: `policy`'s base with the adapter H generates for z (one encoder and one H forward)."""
    net.check_base(policy)
    text = prompt_text(z)
    with torch.no_grad():
        tensors = net.lora_weights(encode([text]).to(next(net.parameters()).device)[0])
    bb = policy.backbone
    config = default_lora_config(r=net.rank, alpha=round(net.scale * net.rank), targets=net.targets)
    with bb.lock:  # one name, one registration: no other thread adds an adapter in between
        linears = target_linears(bb, net.targets)
        paths = {id(lin): name.removesuffix(".base_layer") for name, lin in bb.base_model.named_modules()
                 if isinstance(lin, torch.nn.Linear)}
        weights = {paths[id(linears[key])]: (a.contiguous(), b.contiguous()) for key, (a, b) in tensors.items()}
        with torch.random.fork_rng(devices=[]):  # PEFT's initialisation must not move the user's seeded stream
            name = bb.add_adapter(bb.unique_adapter_name("hypernetwork"), config)
        try:
            bb._copy_lora(name, weights)
        except BaseException:
            bb.remove_adapter(name)  # no half-made adapter left behind
            raise
    return Policy(bb).with_adapter(name)


# -- training -----------------------------------------------------------------------------------------
@dataclass
class HyperNetworkResult(ArrowResult):
    """The trained hypernetwork (`.network`), its training history and the fit on its own prompts."""

    kind: ClassVar[str] = "hypernetwork"
    network: Any = None

    def _save_vertex(self, folder: Path) -> None:
        if self.network is not None:
            self.network.save(folder / "network")

    def _load_vertex(self, folder: Path, **_: Any) -> None:
        if (folder / "network").is_dir():
            self.network = HyperNetwork.load(folder / "network")


GROUP = 8  # prompts whose teacher samples are drawn in one batched generate (32 rows: ~5x the rows/s of 4)


class TeacherRows:
    """The transfer set of every prompt — `inputs_per_prompt` teacher samples y ~ π0(·|x, z) with their top-k
    distributions — made for a group of GROUP prompts when a batch first needs one of them (seeded per group: the
    same rows whenever they are made)."""

    def __init__(self, policy: Policy, prompts: list[str], inputs: list[list[str]], cfg: HyperConfig) -> None:
        if policy.adapter is not None or policy.prompt.system_text():
            raise InvalidArgumentError("train_hypernetwork: pass the base policy π0 (no adapter, no prompt): each "
                                       "training prompt is put in π0's context, and H's adapters go on π0's weights.")
        self.policy, self.prompts, self.inputs, self.cfg = policy, prompts, inputs, cfg
        self.pairs: dict[int, list[Pair]] = {}
        self.teacher: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self, prompts: Sequence[int]) -> tuple[list[Pair], torch.Tensor, torch.Tensor, list[int]]:
        """Every pair of these prompts, their teacher top-k log-probs [N_tokens, k+1] and ids [N_tokens, k], and
        the prompt of each pair."""
        for k in prompts:
            self._make(k // GROUP)
        pairs = [p for k in prompts for p in self.pairs[k]]
        logp = torch.cat([t for k in prompts for t in self.teacher[k][0]])
        idx = torch.cat([t for k in prompts for t in self.teacher[k][1]])
        return pairs, logp, idx, [k for k in prompts for _ in self.pairs[k]]

    def _make(self, group: int) -> None:
        members = range(group * GROUP, min((group + 1) * GROUP, len(self.prompts)))
        if group * GROUP in self.pairs:
            return
        cfg, tok, bb = self.cfg, self.policy.tokenizer, self.policy.backbone
        views = [(k, x, prompt_ids(tok, Prompt(system=self.prompts[k]), x)) for k in members for x in self.inputs[k]]
        ys = sample(bb, [ids for _, _, ids in views], max_new_tokens=cfg.max_new_tokens,
                    temperature=cfg.temperature, seed=cfg.seed + 7919 * group)
        pairs = [Pair(x, ids, prompt_ids(tok, EMPTY, x), y) for (_, x, ids), y in zip(views, ys, strict=True)]
        cache = cache_teacher(self.policy.without_adapter(), pairs, top_k=cfg.top_k, batch_size=8)
        for n, k in enumerate(members):
            part = slice(n * cfg.inputs_per_prompt, (n + 1) * cfg.inputs_per_prompt)
            self.pairs[k], self.teacher[k] = pairs[part], (cache.logp[part], (cache.index or [])[part])


def sample(backbone: Any, rows: list[list[int]], *, max_new_tokens: int, temperature: float,
           seed: int) -> list[list[int]]:
    """y ~ π0(·|prompt) for token-id prompts that differ per row (transformers' generate, seeded; no top-k / top-p):
    each response up to and including its first stop token."""
    from ._keys import base_identity

    return _replay.sampled(lambda: {"sampled": "hypernetwork.sample", "base": base_identity(backbone), "rows": rows,
                                    "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed},
                           lambda: _generate(backbone, rows, max_new_tokens, temperature, seed))


@torch.inference_mode()
def _generate(backbone: Any, rows: list[list[int]], max_new_tokens: int, temperature: float,
              seed: int) -> list[list[int]]:
    from transformers import GenerationConfig

    from .chat import left_pad

    ids, mask = left_pad(rows, backbone.pad_id)
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, min_p=None, typical_p=1.0,
                              repetition_penalty=1.0, no_repeat_ngram_size=0,  # not the model's own defaults
                              max_new_tokens=max_new_tokens, eos_token_id=list(backbone.stop_ids),
                              pad_token_id=backbone.pad_id)
    devices = [backbone.device] if backbone.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), backbone.lock, backbone.adapters_disabled():
        torch.manual_seed(seed)
        out = backbone.base_model.generate(input_ids=ids.to(backbone.device), attention_mask=mask.to(backbone.device),
                                           generation_config=config)
    return [_until_stop(row.tolist(), backbone.stop_ids) for row in out[:, ids.shape[1]:]]


def _until_stop(ids: list[int], stop: Sequence[int]) -> list[int]:
    end = next((i for i, t in enumerate(ids) if t in stop), None)
    return ids if end is None else ids[: end + 1]


def _loss(net: HyperNetwork, rows: TeacherRows, e: torch.Tensor) -> training.LossFn:
    backbone, base = rows.policy.backbone, rows.policy.without_adapter()

    def loss(items: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        pairs, t_logp, t_idx, prompt_of = rows.rows(items)  # items are prompts: all their pairs
        batch = view_batch(pairs, backbone, teacher=False)
        gates = net.gates(e.to(next(net.parameters()).device)[prompt_of])
        with backbone.training(through_base=True), row_adapters(net, backbone, gates):
            student = response_logps(base, batch)  # [N_tokens, V], differentiable through H
        kl = token_kl(t_logp.to(student.device), t_idx.to(student.device), student).mean()  # Eq. 9, top-k + rest
        return kl, {"gate_spread": float(gates.detach().std())}
    return loss


@contextlib.contextmanager
def frozen(backbone: Any) -> Iterator[None]:
    """No gradient for the base weights inside the block (only H trains; adapters are left alone); their flags are
    put back after."""
    with backbone.lock:
        flags = [(p, p.requires_grad) for n, p in backbone.base_model.named_parameters() if ".lora_" not in n]
        for p, _ in flags:
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _family(prompts: Sequence[str] | None, inputs: Sequence[str] | None, cfg: HyperConfig,
            ) -> tuple[list[str], list[list[str]]]:
    """The training prompts (default: the generated family) and each prompt's inputs, drawn seeded from `inputs`."""
    zs = check.texts(prompts if prompts is not None else _prompt_family.train_prompts(), "prompts")
    for i, z in enumerate(zs):
        prompt_text(z, f"prompts[{i}]")
    pool = check.texts(inputs if inputs is not None else _prompt_family.TRAIN_INPUTS, "inputs")
    if len(pool) < cfg.inputs_per_prompt:
        raise InvalidArgumentError(f"inputs has {len(pool)} texts but inputs_per_prompt={cfg.inputs_per_prompt}: pass "
                                   "more inputs or lower inputs_per_prompt.")
    rng = np.random.default_rng(cfg.seed)
    return zs, [[pool[j] for j in rng.choice(len(pool), cfg.inputs_per_prompt, replace=False)] for _ in zs]


@bakeable("train_hypernetwork", configs=("HyperConfig",))
def train_hypernetwork(policy: Policy, prompts: Sequence[str] | None = None, inputs: Sequence[str] | None = None, *,
                       config: HyperConfig | None = None, callback: Callable[[dict[str, float]], None] | None = None,
                       **overrides: Any) -> HyperNetworkResult:
    """Train H (prompt -> LoRA) by context distillation (Eq. 9) over a family of system prompts.

    Args:
        policy: π0, the teacher with each prompt in context and the base of every generated adapter.
        prompts: the system prompts to train on (default: the generated family, 254 prompts).
        inputs: the pool each prompt's `inputs_per_prompt` training inputs are drawn from (seeded).
        config: HyperConfig; keyword `overrides` replace single fields (steps, batch_size, lora_r, output_dir,
            resume_from_checkpoint, ...).
        callback: called with each history row.

    Returns:
        HyperNetworkResult with `.network`, the history (Eq. 9's KL per step) and metrics (steps, seconds, prompts).

    >>> res = tnb.train_hypernetwork(pi0, steps=400, output_dir="runs/hyper")  # doctest: +SKIP
    """
    cfg = training.with_callback(training.build_config(HyperConfig, overrides, base=config), callback)
    zs, xs = _family(prompts, inputs, cfg)
    t0 = time.perf_counter()
    net = new_network(policy, cfg)
    rows = TeacherRows(policy, zs, xs, cfg)
    job = training.Trainable(name="hypernetwork", loss=_loss(net, rows, encode(zs)), n_items=len(rows),
                             backbone=policy.backbone, extra=dict(net.named_parameters()), modules=[net],
                             fingerprint={**policy.backbone.fingerprint(), "rank": cfg.lora_r, "hidden": cfg.hidden})
    cfg = dataclasses.replace(cfg, training_args={"weight_decay": cfg.weight_decay, **dict(cfg.training_args or {})})
    if policy.backbone.activation_checkpointing:  # the backward's recompute would run without the per-row hooks
        raise InvalidArgumentError("train_hypernetwork with activation checkpointing on: turn it off for this run "
                                   "(pi0.backbone.activation_checkpointing = False); the hypernetwork's step fits in "
                                   "memory without it.")
    with frozen(policy.backbone):
        run = training.train(job, cfg, desc="hypernetwork (Eq. 9)")
    net.eval()
    metrics = {**run.metrics(), "n_prompts": len(zs), "n_train_pairs": len(zs) * cfg.inputs_per_prompt,
               "seconds": time.perf_counter() - t0}
    info = {"method": "hypernetwork", **cfg.settings(), "network": net.meta()}
    return HyperNetworkResult(metrics=metrics, history=run.history, info=info, network=net)


def family() -> dict[str, list[str]]:
    """The shipped network's training data as explicit arguments (so the bake's key holds every prompt and input)."""
    return {"prompts": list(_prompt_family.train_prompts()), "inputs": list(_prompt_family.TRAIN_INPUTS)}


def default_network(policy: Policy) -> HyperNetwork:
    """The shipped hypernetwork for `policy`'s base: the bake of `train_hypernetwork(π0, **family())` at its defaults
    (its training takes about an hour on one core, so LIVE=True does not redo it; `train_hypernetwork` does). Loaded
    once per backbone."""
    cached = getattr(policy.backbone, "_hypernetwork", None)
    if cached is not None:
        return cached
    result = lookup(train_hypernetwork, Policy(policy.backbone), **family())
    if result is None:
        raise ModelLoadError(f"no trained hypernetwork is shipped for base model {policy.backbone.name!r} in "
                             f"{policy.backbone.base_model.dtype} (the shipped one is for the embedded model in float32): "
                             f"train one with `{REBUILD_COMMAND}` (about an hour on one CPU core), or pass network= a "
                             "HyperNetwork (HyperNetwork.load(folder)).")
    result.network.provenance = f"{result.info.get('provenance', '')} (its training; one forward per prompt)"
    policy.backbone._hypernetwork = result.network
    return result.network


def main(argv: list[str] | None = None) -> None:
    """`python -m triangle_nb.hypernetwork [--steps N] [--output-dir DIR] [--resume]`: train H on the embedded model
    with one thread (checkpoints in DIR, resumable) and store it as the shipped bake."""
    import argparse
    import os

    parser = argparse.ArgumentParser(prog=REBUILD_COMMAND, description=main.__doc__)
    parser.add_argument("--steps", type=int, default=HyperConfig.steps)
    parser.add_argument("--output-dir", default="runs/hypernetwork")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in --output-dir")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from .loading import load_policy

    pi0 = load_policy()
    call = family() | ({"steps": args.steps} if args.steps != HyperConfig.steps else {})
    os.environ["TRIANGLE_NB_BAKE_SOURCE"] = "hypernetwork"
    t0 = time.perf_counter()
    result = train_hypernetwork(pi0, output_dir=args.output_dir, resume_from_checkpoint=args.resume or None,
                                training_args={"save_steps": 50, "save_total_limit": 2},
                                callback=lambda row: print(json.dumps(row), flush=True), **call)
    folder = store_as(train_hypernetwork, result, time.perf_counter() - t0, pi0, **call)
    print(f"stored {folder}: {result.metrics}")


if __name__ == "__main__":
    main()
