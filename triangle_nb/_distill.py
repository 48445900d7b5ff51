"""Shared machinery of arrows 3 and 4: token-exact transfer pairs, cached teacher distributions,
and the per-token KL / NLL between a teacher and a student on the same responses.

A `Pair` holds a response y (as token ids, exactly as it was generated) plus the prompt ids the
teacher sees (x with z) and the prompt ids the student sees (x without z, or with another z).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from typing import TYPE_CHECKING

from .backbone import Backbone
from .chat import PairBatch, pair_batch, prompt_ids
from .policy import Policy
from .scoring import response_logits

if TYPE_CHECKING:
    from ._types import PolicyPart


@dataclass(frozen=True)
class Pair:
    """One transfer example: the teacher's and the student's view of (x, y)."""

    x: str
    teacher_ids: list[int]  # chat up to the assistant header, with the teacher's z
    student_ids: list[int]  # chat up to the assistant header, with the student's z
    y_ids: list[int]  # the response tokens (with the stop token when the sample ended)


def make_pairs(teacher: Policy, student: Policy, xs: Sequence[str], y_ids: Sequence[list[int]]) -> list[Pair]:
    """Token-exact pairs: each prompt tokenised under each policy's own z."""
    tok = teacher.tokenizer
    return [Pair(x, prompt_ids(tok, teacher.prompt, x), prompt_ids(tok, student.prompt, x), list(y))
            for x, y in zip(xs, y_ids, strict=True) if y]


def sample_pairs(teacher: Policy, student: Policy, xs: Sequence[str], *, samples: int, max_new_tokens: int,
                 temperature: float, seed: int) -> list[Pair]:
    """Sample `samples` responses per x from the teacher (KV-cached) and pair them with the student's view."""
    if not xs:
        return []
    ids = teacher.generate_ids(list(xs), samples=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed)
    return make_pairs(teacher, student, [x for x in xs for _ in range(samples)], ids)


def chunks(pairs: Sequence[Pair], size: int) -> Iterator[list[Pair]]:
    for start in range(0, len(pairs), size):
        yield list(pairs[start : start + size])


def response_logps(part: PolicyPart, batch: PairBatch) -> torch.Tensor:
    """log π(· | prefix) at every response position of the batch under `part`'s adapter and exit layer (the prompt
    is in the batch's ids), rows concatenated: [N_tokens, V].

    Differentiable when called outside `torch.inference_mode()` (training). The logits come from
    `scoring.response_logits`, the one log π path.
    """
    n = len(batch.targets)
    logits = response_logits(part.backbone, batch, [part.adapter] * n, [part.exit_layer] * n)
    mask = batch.response_mask.to(logits.device)[:, -logits.shape[1]:]
    return torch.log_softmax(logits[mask], dim=-1)  # row-major: pair by pair, token by token


def view_batch(pairs: Sequence[Pair], backbone: Backbone, *, teacher: bool) -> PairBatch:
    return pair_batch([(p.teacher_ids if teacher else p.student_ids, p.y_ids) for p in pairs], backbone.pad_id)


@dataclass
class TeacherCache:
    """The teacher's next-token distributions on the transfer set, computed once.

    With `top_k`, each position keeps the k most likely tokens plus one "rest" bucket holding the
    remaining mass, so the cached KL is the exact KL of that coarsened distribution (memory:
    k+1 numbers per token instead of V).
    """

    logp: list[torch.Tensor]  # per pair: [L, V] (full) or [L, k+1] (top-k + rest)
    index: list[torch.Tensor] | None  # per pair: [L, k] token ids, or None when full

    def batch(self, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        logp = torch.cat([self.logp[i] for i in ids])
        return logp, (torch.cat([self.index[i] for i in ids]) if self.index is not None else None)

    @property
    def nbytes(self) -> int:
        parts = self.logp + (self.index or [])
        return sum(t.numel() * t.element_size() for t in parts)


@torch.inference_mode()
def cache_teacher(teacher: PolicyPart, pairs: Sequence[Pair], *, top_k: int | None, batch_size: int) -> TeacherCache:
    """Run the teacher once over the transfer set, in batches, keeping (top-k of) its distributions."""
    logps: list[torch.Tensor] = []
    index: list[torch.Tensor] | None = [] if top_k else None
    for chunk in chunks(pairs, batch_size):
        full = response_logps(teacher, view_batch(chunk, teacher.backbone, teacher=True)).cpu()
        for block in full.split([len(p.y_ids) for p in chunk]):
            if top_k is None:
                logps.append(block.clone())
            else:
                lp, idx = coarsen(block, top_k)
                logps.append(lp)
                index.append(idx)  # type: ignore[union-attr]
    return TeacherCache(logps, index)


def coarsen(logp: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, V] log-probs -> ([L, k+1] log-probs of the top k tokens and of the rest, [L, k] ids)."""
    top, idx = logp.topk(min(top_k, logp.shape[-1] - 1), dim=-1)
    return torch.cat([top, rest_logp(logp, idx)], dim=-1), idx


def rest_logp(logp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log of the mass outside `idx`, computed stably by masking (not 1 − Σ): [L, 1]."""
    return logp.scatter(-1, idx, float("-inf")).logsumexp(-1, keepdim=True)


def token_kl(teacher_logp: torch.Tensor, teacher_idx: torch.Tensor | None, student_logp: torch.Tensor, *,
             reverse: bool = False) -> torch.Tensor:
    """Per-token KL[teacher ‖ student] (Eq. 9), or KL[student ‖ teacher] with `reverse` (Eq. 12): [N]."""
    if teacher_idx is not None:  # coarsen the student the same way as the cached teacher
        student_logp = torch.cat([student_logp.gather(-1, teacher_idx), rest_logp(student_logp, teacher_idx)], -1)
    p_log, q_log = (student_logp, teacher_logp) if reverse else (teacher_logp, student_logp)
    return (p_log.exp() * (p_log - q_log)).nan_to_num(0.0).sum(-1)  # 0·log 0 = 0


def targets(batch: PairBatch) -> torch.Tensor:
    return batch.targets[batch.response_mask]


@dataclass
class Gap:
    """Per-token averages over a set of pairs: KL[teacher ‖ student], and each side's NLL of y."""

    kl: float
    nll_teacher: float
    nll_student: float
    tokens: int

    @property
    def nll_gap(self) -> float:
        return self.nll_student - self.nll_teacher


@torch.inference_mode()
def measure(teacher: PolicyPart, student: PolicyPart, pairs: Sequence[Pair], *, batch_size: int = 8,
            reverse: bool = False) -> Gap:
    """Exact (full-vocabulary) per-token KL and NLLs, streamed batch by batch (nothing cached).

    `reverse` measures KL[student ‖ teacher] (Eq. 12's direction) instead of KL[teacher ‖ student].
    """
    kl, nll_t, nll_s, n = 0.0, 0.0, 0.0, 0
    for chunk in chunks(pairs, batch_size):
        tb, sb = view_batch(chunk, teacher.backbone, teacher=True), view_batch(chunk, student.backbone, teacher=False)
        t, s = response_logps(teacher, tb), response_logps(student, sb)
        y = targets(tb).to(t.device)[:, None]
        kl += float(token_kl(t, None, s, reverse=reverse).sum())
        nll_t -= float(t.gather(-1, y).sum())
        nll_s -= float(s.gather(-1, y).sum())
        n += len(y)
    n_ = max(n, 1)
    return Gap(kl / n_, nll_t / n_, nll_s / n_, n)


def gap_closed(before: float, after: float) -> float | None:
    """Share of a gap closed: 1 − after/before (None when there was no gap to close)."""
    return float(1.0 - after / before) if before > 1e-9 else None
