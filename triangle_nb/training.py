"""The training engine of every arrow: `transformers.Trainer` with the arrow's equation as its loss.

Each training arrow (reward ⇒ update for every method, prompt ⇒ update, update ⇒ prompt's soft prompt,
reward ⇒ prompt's conditioned SFT, the hallucination adapter, the Bradley–Terry reward model) keeps its maths
and its data and hands this module an `Trainable`: the parameters that train (a NEW LoRA adapter on the shared
backbone and/or soft-prompt vectors or a small head), how many training items there are, and
`loss(items, step) -> (loss, logs)` — the arrow's equation on one micro-batch of items. Everything else is the
Trainer's: AdamW, learning-rate schedule and warm-up, gradient accumulation, mixed precision, clipping,
logging (`history` is its log), checkpoints with optimiser / scheduler / RNG state, exact resume, callbacks,
and one run across processes under `accelerate launch` or `torchrun` (DDP over the Trainable's module:
gradients all-reduced, each process a share of every batch).

Why a Trainer subclass and not TRL's trainers themselves: TRL 1.16 trains only an adapter named "default" and
adds a frozen "ref" copy when given a PeftModel (its named-adapter options were removed), while here one backbone
carries the adapters of many policies at once and a run may train soft vectors beside an adapter. The losses are
TRL's formulas (`triangle_nb.losses`, checked against the installed TRL in tests/test_losses.py).

Only the trained parameters change: every other adapter and the base weights stay bit-identical, and a
checkpoint holds just the trained tensors (safetensors) plus the optimiser, scheduler and RNG state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils.notebook import NotebookProgressCallback

from . import _validate as check
from .control import progress
from .errors import ArtifactKindError, InvalidArgumentError, ModelLoadError
from .options import build_config, renamed  # noqa: F401  (re-exported: the arrows' configs)

LossFn = Callable[[list[int], int], tuple[torch.Tensor, dict[str, float]]]
ADAPTER = "{adapter}"  # stands for the trained adapter's name in checkpoint tensor names
CHECKPOINT_META = "triangle_nb_checkpoint.json"
TRAINED_TENSORS = "trained.safetensors"

# TrainingArguments fields that the shared config already sets, with the keyword to use instead
OWNED = {"max_steps": "steps", "learning_rate": "learning_rate", "per_device_train_batch_size": "batch_size",
         "seed": "seed", "output_dir": "output_dir", "resume_from_checkpoint": "resume_from_checkpoint",
         "num_train_epochs": "steps", "use_cpu": "the policy's device (load_policy(device=...))"}


# -- the one training config ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What every training arrow shares (method configs extend it and may change the defaults).

    Attributes:
        steps: optimiser steps.
        batch_size: items per optimiser step over all processes (split into per-process micro-batches, and
            into `gradient_accumulation_steps` of them when `training_args` asks for accumulation).
        learning_rate: AdamW learning rate (constant unless `training_args` sets a schedule / warm-up).
        lora_r: LoRA rank of the new adapter (alpha = 2 r).
        lora_targets: the projections the new adapter wraps (default: query and value, PEFT's default; facts live
            in the MLP: knowledge injection uses ("up_proj", "down_proj")).
        seed: seeds the adapter's initialisation, the sampling and the batch order.
        output_dir: checkpoints go there (`checkpoint-<step>/`, every steps // 4 and at the end, the last two kept:
            `training_args` `save_steps` / `save_total_limit` change that); None keeps nothing on disk.
        resume_from_checkpoint: True for the latest checkpoint in `output_dir`, or a checkpoint folder.
        callbacks: `transformers.TrainerCallback`s (e.g. to stop early, or to log somewhere).
        training_args: more `transformers.TrainingArguments` fields (gradient_accumulation_steps,
            lr_scheduler_type, warmup_ratio, bf16, save_steps, report_to, ...).
    """

    steps: int = 20
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    output_dir: str | None = field(default=None, compare=False)
    resume_from_checkpoint: bool | str | None = field(default=None, compare=False)
    callbacks: tuple[Any, ...] = field(default=(), compare=False)
    training_args: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "lora_r"):
            check.positive_int(getattr(self, name), name)
        object.__setattr__(self, "seed", check.seed(self.seed))
        object.__setattr__(self, "learning_rate", check.finite_positive(self.learning_rate, "learning_rate"))
        object.__setattr__(self, "callbacks", _callbacks(self.callbacks))
        object.__setattr__(self, "training_args", _training_args(self.training_args))
        object.__setattr__(self, "lora_targets", _lora_targets(self.lora_targets))
        if self.output_dir is not None:
            object.__setattr__(self, "output_dir", os.fspath(self.output_dir))
        if self.resume_from_checkpoint is not None and not isinstance(self.resume_from_checkpoint, (bool, str, os.PathLike)):
            raise InvalidArgumentError("resume_from_checkpoint must be True (the latest checkpoint in output_dir) or "
                                       f"a checkpoint folder, got {type(self.resume_from_checkpoint).__name__}.")

    def settings(self) -> dict[str, Any]:
        """The JSON-able settings (for a result's `info`): every field except the run plumbing."""
        skip = {"callbacks", "training_args", "resume_from_checkpoint"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        return {k: (str(v) if isinstance(v, Path) or hasattr(v, "value") else list(v) if isinstance(v, tuple) else v)
                for k, v in out.items()} | {
            "training_args": dict(self.training_args or {})}


def _lora_targets(value: Any) -> tuple[str, ...]:
    """Literal projection names (e.g. ("q_proj", "v_proj")): a single string would be a PEFT regex, refused."""
    if isinstance(value, str) or not value or not all(isinstance(v, str) and v.isidentifier() for v in value):
        raise InvalidArgumentError(f"lora_targets must be a non-empty list of layer names such as ('q_proj', 'v_proj'), "
                                   f"got {value!r}.")
    return tuple(value)


def _callbacks(value: Any) -> tuple[Any, ...]:
    items = () if value is None else tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for i, cb in enumerate(items):
        if not (isinstance(cb, TrainerCallback) or (isinstance(cb, type) and issubclass(cb, TrainerCallback))):
            raise InvalidArgumentError(f"callbacks[{i}] is a {type(cb).__name__}: pass transformers.TrainerCallback "
                                       "instances (e.g. EarlyStoppingCallback, or a subclass with on_step_end).")
    return items


def _training_args(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"training_args must be a dict of TrainingArguments fields, got {type(value).__name__}.")
    valid = {f.name for f in dataclasses.fields(TrainingArguments)}
    value = _warmup_ratio(dict(value), valid)
    bad = sorted(k for k in value if k not in valid)
    if bad:
        raise InvalidArgumentError(f"training_args has unknown key(s) {bad}: use transformers.TrainingArguments "
                                   "fields (gradient_accumulation_steps, lr_scheduler_type, warmup_ratio, bf16, ...).")
    owned = sorted(k for k in value if k in OWNED)
    if owned:
        raise InvalidArgumentError(f"training_args sets {owned}, which the arrow's own keywords set: pass "
                                   + ", ".join(f"{OWNED[k]}= instead of {k}" for k in owned) + ".")
    return dict(value)


def _warmup_ratio(value: dict[str, Any], valid: set[str]) -> dict[str, Any]:
    """transformers 5 folded `warmup_ratio` into `warmup_steps` (a float < 1 is a ratio): the README's
    training_args={"warmup_ratio": 0.1} keeps working."""
    if "warmup_ratio" not in value or "warmup_ratio" in valid:
        return value
    ratio = value.pop("warmup_ratio")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise InvalidArgumentError(f"training_args['warmup_ratio'] must be a number in [0, 1), got {ratio!r}.")
    if "warmup_steps" in value:
        raise InvalidArgumentError("training_args sets both warmup_ratio and warmup_steps: pass one of them.")
    return value | {"warmup_steps": float(ratio)}


# -- what an arrow hands the engine -----------------------------------------------------------------
@dataclass
class Trainable:
    """One training run's maths: the trained parameters and the loss on a micro-batch of item indices.

    Attributes:
        name: the method (checked when resuming: a checkpoint of another method is refused).
        loss: `loss(items, step) -> (scalar loss, logs)`; items index the training data, step counts from 1.
        n_items: how many training items there are (pairs, rows, inputs).
        backbone: the shared backbone whose `adapter` trains (None for a model-free objective).
        adapter: the NEW adapter being trained, or None when only `extra` trains.
        extra: other trained parameters by stable name (soft-prompt vectors, a reward head's weights).
        extra_lr: their learning rate (None: the config's learning_rate).
        modules: modules that own `extra` (registered so that DDP sees them); the backbone's model is added.
        fingerprint: what a checkpoint must agree with (the base model's shape), besides `name`.
        max_grad_norm: gradient clipping of the method (0: none); `training_args` may override it.
    """

    name: str
    loss: LossFn
    n_items: int
    backbone: Any = None
    adapter: str | None = None
    extra: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    extra_lr: float | None = None
    modules: list[torch.nn.Module] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    max_grad_norm: float = 1.0

    def trained(self) -> dict[str, torch.nn.Parameter]:
        """Every trained parameter by a name that does not depend on the adapter's name on this backbone."""
        out: dict[str, torch.nn.Parameter] = {}
        if self.adapter is not None:
            tag = f".{self.adapter}."
            out = {n.replace(tag, f".{ADAPTER}."): p for n, p in self.backbone.model.named_parameters() if tag in n}
        return out | {f"extra.{k}": p for k, p in self.extra.items()}

    def meta(self) -> dict[str, Any]:
        fp = self.fingerprint or (self.backbone.fingerprint() if self.backbone is not None else {})
        return {"method": self.name, "fingerprint": fp}


@dataclass
class Run:
    """What training returned: the history (the Trainer's log), whether it stopped early, processes, checkpoint."""

    history: pd.DataFrame
    interrupted: bool
    world_size: int
    steps: int
    checkpoint: str | None = None

    def metrics(self) -> dict[str, Any]:
        return {"steps": self.steps, "interrupted": self.interrupted, "world_size": self.world_size}


# -- running it ----------------------------------------------------------------------------------------
def train(objective: Trainable, cfg: TrainConfig, *, batch_size: int | None = None, desc: str = "") -> Run:
    """Train `objective` with the Trainer under `cfg`; Ctrl-C (or a stopping callback) keeps the last good step.

    Args:
        batch_size: items per optimiser step when it is not `cfg.batch_size` (e.g. KTO's chosen + rejected rows).
        desc: the progress bar's label.
    """
    params = objective.trained()
    if not params:
        raise InvalidArgumentError(f"nothing to train for {objective.name!r}: the objective has no parameters.")
    resume = _resume_path(cfg)
    out_dir = cfg.output_dir or tempfile.mkdtemp(prefix="triangle_nb-run-")
    _check_writable(out_dir)
    if resume is not None:
        check_checkpoint(resume, objective)
    args = _arguments(cfg, out_dir, batch_size or cfg.batch_size, objective, desc)
    module = _LossModule(objective)
    trainer = ArrowTrainer(objective, model=module, args=args, train_dataset=_Items(objective.n_items),
                           data_collator=_collate, callbacks=list(cfg.callbacks))
    _progress_bar_only(trainer)
    keeper = _LastGood(params)
    trainer.add_callback(keeper)
    trainer.add_callback(_Control())
    for p in params.values():
        p.requires_grad_(True)
    interrupted = False
    try:
        with _live(objective):
            interrupted = _fit(trainer, resume, keeper)
    finally:
        for p in params.values():
            p.requires_grad_(False)
        if objective.backbone is not None:
            with objective.backbone.lock:
                objective.backbone.model.eval()
            objective.backbone.release_memory()
        if cfg.output_dir is None:
            shutil.rmtree(out_dir, ignore_errors=True)
    state = trainer.state
    return Run(history=trainer.history(), interrupted=interrupted or state.global_step < cfg.steps,
               world_size=int(args.world_size), steps=int(state.global_step),
               checkpoint=_last_checkpoint(cfg.output_dir) if cfg.output_dir else None)


def _fit(trainer: Trainer, resume: str | None, keeper: _LastGood) -> bool:
    """Run the Trainer; on Ctrl-C put the last completed step's tensors back. Returns whether it was interrupted."""
    try:
        trainer.train(resume_from_checkpoint=resume)
    except KeyboardInterrupt:
        keeper.restore()
        return True
    return False


def _live(objective: Trainable) -> contextlib.AbstractContextManager[None]:
    """The run's claim on its backbone (`Backbone.training_run`): one run per backbone at a time, its trained
    tensors not removable meanwhile; other threads' forwards wait for each step (`ArrowTrainer.training_step`)."""
    bb = objective.backbone
    if bb is None or not hasattr(bb, "training_run"):
        return contextlib.nullcontext()
    return bb.training_run(objective.adapter, objective.extra.values())


def _arguments(cfg: TrainConfig, out_dir: str, batch_size: int, objective: Trainable, desc: str) -> TrainingArguments:
    extra = dict(cfg.training_args or {})
    accum = check.positive_int(extra.pop("gradient_accumulation_steps", 1), "training_args['gradient_accumulation_steps']")
    on_cpu = _device(objective).type == "cpu"
    defaults = {"lr_scheduler_type": "constant", "weight_decay": 0.0, "max_grad_norm": objective.max_grad_norm,
                "logging_steps": 1,
                "report_to": "none", "save_strategy": "steps" if cfg.output_dir else "no",
                "save_steps": max(1, cfg.steps // 4), "save_total_limit": 2, "dataloader_pin_memory": False,
                "disable_tqdm": bool(os.environ.get("TQDM_DISABLE")), "remove_unused_columns": False,
                # full batches only (when there is one): N processes then see exactly the global batches of one
                "dataloader_drop_last": objective.n_items >= batch_size,
                "ddp_find_unused_parameters": bool(objective.extra)}  # soft tags not in a batch get no gradient
    args = TrainingArguments(output_dir=out_dir, max_steps=cfg.steps, learning_rate=cfg.learning_rate, seed=cfg.seed,
                             gradient_accumulation_steps=accum, use_cpu=on_cpu,
                             per_device_train_batch_size=1, **(defaults | extra))
    per_device = _per_device(batch_size, int(args.world_size), accum)
    args.per_device_train_batch_size = per_device
    args.run_name = desc or None
    return args


def _device(objective: Trainable) -> torch.device:
    if objective.backbone is not None:
        return objective.backbone.device
    return next(iter(objective.extra.values())).device


def _per_device(batch_size: int, world_size: int, accum: int) -> int:
    """The micro-batch of one process: batch_size / (processes × accumulation steps), exactly."""
    parts = world_size * accum
    if batch_size % parts:
        raise InvalidArgumentError(
            f"batch_size={batch_size} does not split over {world_size} process(es) × {accum} accumulation step(s): "
            f"use a multiple of {parts} (batch_size is the items of one optimiser step over all processes).")
    return batch_size // parts


def _resume_path(cfg: TrainConfig) -> str | None:
    """The checkpoint folder to resume from (None: start fresh); clear errors when there is none."""
    r = cfg.resume_from_checkpoint
    if r is None or r is False:
        return None
    if r is True:
        if cfg.output_dir is None:
            raise InvalidArgumentError("resume_from_checkpoint=True needs output_dir= (the folder holding the "
                                       "checkpoints), or pass the checkpoint folder itself.")
        last = _last_checkpoint(cfg.output_dir)
        if last is None:
            raise ModelLoadError(f"resume_from_checkpoint=True but {cfg.output_dir!r} holds no checkpoint-<step> "
                                 "folder: run once with output_dir= (checkpoints every save_steps) first, or "
                                 "leave resume_from_checkpoint out to start fresh.")
        return last
    path = Path(r)
    if not (path / CHECKPOINT_META).is_file():
        raise ModelLoadError(f"resume_from_checkpoint={str(r)!r} is not a triangle_nb checkpoint folder (no "
                             f"{CHECKPOINT_META}): pass a checkpoint-<step> folder from output_dir, or True.")
    return str(path)


def _last_checkpoint(output_dir: str) -> str | None:
    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def _check_writable(folder: str) -> None:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InvalidArgumentError(f"output_dir={folder!r} is not writable ({exc.strerror or exc}): pass a folder "
                                   "you can write to, e.g. output_dir='runs/my-run'.") from exc


def check_checkpoint(folder: str, objective: Trainable) -> None:
    """Refuse a checkpoint written for another method or another base model."""
    meta = json.loads((Path(folder) / CHECKPOINT_META).read_text())
    mine = objective.meta()
    if meta.get("method") != mine["method"]:
        raise ArtifactKindError(f"checkpoint {folder!r} is from a {meta.get('method')!r} run, not {mine['method']!r}: "
                                "resume with the same method, or start fresh in another output_dir.")
    if meta.get("fingerprint") != mine["fingerprint"]:
        raise ArtifactKindError(f"checkpoint {folder!r} was trained on a base with {meta.get('fingerprint')}, but "
                                f"this one has {mine['fingerprint']}: resume on the same base model.")


# -- the Trainer and its pieces ------------------------------------------------------------------------
class _Items(torch.utils.data.Dataset):
    """The training data as item indices: the objective knows what item i is (a pair, a row, an input)."""

    def __init__(self, n: int) -> None:
        self.n = check.positive_int(n, "training items")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate(items: Sequence[int]) -> dict[str, torch.Tensor]:
    return {"idx": torch.tensor(list(items), dtype=torch.long)}


class _LossModule(torch.nn.Module):
    """The module the Trainer (and DDP) sees: its forward is the arrow's loss on a micro-batch of items."""

    def __init__(self, objective: Trainable) -> None:
        super().__init__()
        self.objective = [objective]  # a list: not a submodule
        self.parts = torch.nn.ModuleList(objective.modules + ([objective.backbone.model] if objective.backbone else []))
        self.loose = torch.nn.ParameterList([p for p in objective.extra.values()
                                             if not any(p is q for m in objective.modules for q in m.parameters())])

    def train(self, mode: bool = True) -> _LossModule:
        """Only this wrapper: the objective puts the backbone in train mode around its differentiable forwards
        (sampling inside a step, e.g. GRPO's, runs in eval mode)."""
        self.training = mode
        return self

    def forward(self, idx: torch.Tensor, step: int = 0) -> dict[str, Any]:
        loss, logs = self.objective[0].loss(idx.tolist(), int(step))
        return {"loss": loss, "logs": logs}


class ArrowTrainer(Trainer):
    """`transformers.Trainer` whose loss is the objective's equation and whose checkpoints hold only the
    trained tensors (not the base, not the other adapters)."""

    def __init__(self, objective: Trainable, **kwargs: Any) -> None:
        self.objective = objective
        self._step_logs: list[dict[str, float]] = []
        self._t0 = time.perf_counter()
        super().__init__(**kwargs)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """One micro-batch's forward and backward with the backbone's lock held: a forward from another thread (a
        notebook cell while a panel trains) waits for the step, then runs in its own mode (eval) with its own
        adapters, and nothing of it (PEFT's per-forward adapter hooks, train mode) reaches this step's backward."""
        lock = getattr(self.objective.backbone, "lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        out = model(idx=inputs["idx"], step=self.state.global_step + 1)
        if not bool(torch.isfinite(out["loss"].detach()).all()):  # NaN weights would follow, silently
            raise InvalidArgumentError(f"training step {self.state.global_step + 1}: the loss is "
                                       f"{float(out['loss'].detach().float().mean())} (not finite): beta is too large "
                                       "or too small for this loss, or learning_rate too large (try beta=0.1, "
                                       "learning_rate=1e-4); no update was made from this step.")
        self._step_logs.append(out["logs"])
        return (out["loss"], out) if return_outputs else out["loss"]

    def create_optimizer(self, model: Any = None) -> Any:
        if self.optimizer is None:
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args)
            self.optimizer = cls(_param_groups(self.objective, self.args), **kwargs)
        return self.optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._step_logs:
            keys = {k for row in self._step_logs for k in row}
            logs = logs | {k: _mean([row[k] for row in self._step_logs if k in row]) for k in sorted(keys)}
            logs["seconds"] = time.perf_counter() - self._t0
            self._step_logs = []
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().cpu().contiguous() for n, p in self.objective.trained().items()}
        save_file(tensors, str(folder / TRAINED_TENSORS))
        (folder / CHECKPOINT_META).write_text(json.dumps(self.objective.meta()))
        if self.objective.adapter is not None:  # also loadable as a plain PEFT adapter
            self.objective.backbone.save_adapter(self.objective.adapter, folder / "adapter")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        check_checkpoint(resume_from_checkpoint, self.objective)
        load_trained(self.objective, resume_from_checkpoint)

    def history(self) -> pd.DataFrame:
        """The Trainer's log, one row per optimiser step: step, loss, then the rest."""
        table = pd.DataFrame([dict(r) for r in self.state.log_history if "loss" in r])
        if table.empty:
            return table
        first = ["step", "loss"]
        return table[first + [c for c in table.columns if c not in first]]


def load_trained(objective: Trainable, folder: str | os.PathLike[str]) -> None:
    """Copy a checkpoint's trained tensors into the objective's parameters (names must match exactly)."""
    saved = load_file(str(Path(folder) / TRAINED_TENSORS))
    params = objective.trained()
    if set(saved) != set(params):
        raise ArtifactKindError(f"checkpoint {str(folder)!r} holds other tensors than this run trains "
                                f"({len(saved)} vs {len(params)}; e.g. another lora_r or n_tokens): resume with the "
                                "settings it was trained with.")
    with torch.no_grad():
        for n, p in params.items():
            if saved[n].shape != p.shape:
                raise ArtifactKindError(f"checkpoint tensor {n!r} has shape {list(saved[n].shape)}, this run's has "
                                        f"{list(p.shape)}: resume with the settings it was trained with.")
            p.copy_(saved[n].to(p.device, p.dtype))


def _param_groups(objective: Trainable, args: Any) -> list[dict[str, Any]]:
    """The adapter at the config's learning rate, the extra parameters at theirs (no weight decay on either
    unless training_args sets it)."""
    extra_ids = {id(p) for p in objective.extra.values()}
    trained = objective.trained().values()
    main = [p for p in trained if id(p) not in extra_ids]
    groups = [{"params": main, "lr": args.learning_rate, "weight_decay": args.weight_decay}] if main else []
    if objective.extra:
        groups.append({"params": list(objective.extra.values()), "lr": objective.extra_lr or args.learning_rate,
                       "weight_decay": args.weight_decay})
    return groups


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _progress_bar_only(trainer: Trainer) -> None:
    """One progress bar per run (tqdm.auto: a widget in a notebook, text in a terminal), and no printed logs."""
    for cls in (NotebookProgressCallback, PrinterCallback, ProgressCallback):
        trainer.remove_callback(cls)
    if not trainer.args.disable_tqdm:
        trainer.add_callback(_Bar())


class _Bar(ProgressCallback):
    """transformers' tqdm progress bar without writing each log line under it."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


# -- callbacks ---------------------------------------------------------------------------------------
class _LastGood(TrainerCallback):
    """Snapshot of the trained tensors after every completed step: Ctrl-C restores the last good one."""

    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.params = params
        self.saved = {n: p.detach().clone() for n, p in params.items()}

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.saved = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for n, p in self.params.items():
            p.copy_(self.saved[n])


class _Control(TrainerCallback):
    """Stop and progress through `triangle_nb.control`: each completed step reports ("training step", n, of) and ends
    the run there when a stop was asked (the last good step is the one just finished)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.on_step_end(args, state, control)  # "training step 0/8" (a Stop asked before ends after step 1)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if progress("training step", state.global_step, state.max_steps):
            control.should_training_stop = True


def stop_when(event: threading.Event) -> Any:
    """A TrainerCallback that asks the Trainer to stop after the current step once `event` is set (the panels'
    Stop button): the run ends cleanly with the last completed step's weights and `interrupted=True`."""

    class StopWhenSet(TrainerCallback):
        observer = True  # changes no result it lets finish: a baked run may serve the call (triangle_nb.bake)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if event.is_set():
                control.should_training_stop = True

    return StopWhenSet()


def stop_at(step: int) -> Any:
    """A TrainerCallback that stops the run after `step` optimiser steps (e.g. to test resuming)."""
    check.positive_int(step, "step")

    class StopAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= step:
                control.should_training_stop = True
                control.should_save = bool(args.save_strategy != "no")

    return StopAt()


def on_row(fn: Callable[[dict[str, Any]], None]) -> Any:
    """A TrainerCallback calling `fn(row)` with each logged history row (live plots, the panels' step line)."""

    class OnRow(TrainerCallback):
        observer = True  # only watches: a baked run may serve the call and replay its rows into `row_fn`
        row_fn = staticmethod(fn)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                fn({"step": state.global_step, **logs})

    return OnRow()


def with_callback(cfg: Any, callback: Callable[[dict[str, Any]], None] | None) -> Any:
    """`cfg` with `on_row(callback)` added to its callbacks (the `callback=` keyword every arrow shares)."""
    if callback is None:
        return cfg
    if not callable(callback):
        raise InvalidArgumentError(f"callback must be a function of one history row (a dict), got {type(callback).__name__}.")
    return dataclasses.replace(cfg, callbacks=(*cfg.callbacks, on_row(callback)))


def sft_loss(backbone: Any, adapter: str, rows: Sequence[tuple[list[int], list[int]]]) -> LossFn:
    """The SFT loss (Eq. 10, 17): − log π(y|x) per response token of `rows`, through `adapter`."""
    from .chat import pair_batch
    from .scoring import response_nll

    def loss(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        with backbone.training():
            return response_nll(backbone, pair_batch([rows[i] for i in idx], backbone.pad_id).to(backbone.device),
                                adapter), {}
    return loss


def new_adapter(backbone: Any, stem: str, config: Any, *, seed: int, copy_from: str | None = None) -> str:
    """Add a NEW LoRA adapter (named after `stem`, unique on the backbone) with a seeded initialisation, or a copy
    of adapter `copy_from` (π* = π0 at step 0 when π0 has an adapter); return its name."""
    with seeded(seed):  # the random init is part of the run: resume and N processes agree on it
        name = backbone.add_adapter(backbone.unique_adapter_name(stem), config)
    if copy_from is not None:
        src = dict(backbone.model.named_parameters())
        with torch.no_grad():
            for n, p in backbone.model.named_parameters():
                if f".{name}." in n:
                    p.copy_(src[n.replace(f".{name}.", f".{copy_from}.")])
    return name


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block only (a new adapter's initialisation is then reproducible, which
    exact resume and the 1- vs N-process agreement need), leaving the caller's RNG stream as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
