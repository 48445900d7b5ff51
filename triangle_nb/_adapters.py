"""The Backbone's adapters: adding, loading (through `_adapter_gate`), saving and removing named LoRA adapters on the
one copy of the weights, and the default LoRA config every arrow trains.

`Adapters` is a mixin of `backbone.Backbone`: the state it uses (`self.model`, which becomes a PeftModel with the first
adapter, `self.lock`, `self._runs`) is set by `Backbone.__init__` and declared at the top of the class. This module
never imports backbone.py.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from . import _adapter_gate, _io
from ._io import read_json
from ._threads import EVAL, _Run, _serialised
from .errors import AdapterMismatchError, BackboneBusyError, InvalidArgumentError, ModelLoadError

BASE = "__base__"  # PEFT's adapter name for "no adapter" in mixed batches


class Adapters:
    """Mixin of Backbone: its named adapters. Calls `_apply` and `_recorders` (`_threads.ThreadModel`) and Backbone's
    `base_model` and `fingerprint` (each marked where it is called)."""

    # set by Backbone.__init__ (see it for what each holds)
    model: PreTrainedModel | PeftModel
    name: str
    lock: threading.RLock
    _runs: list[_Run]

    @property
    def adapters(self) -> list[str]:
        return list(self.model.peft_config) if isinstance(self.model, PeftModel) else []

    def unique_adapter_name(self, stem: str) -> str:
        i, name = 0, stem
        while name in self.adapters:
            i, name = i + 1, f"{stem}_{i + 1}"
        return name

    @_serialised
    def add_adapter(self, name: str, config: PeftConfig | None = None) -> str:
        """Add a new trainable adapter (LoRA by default) and return its name."""
        config = config or default_lora_config()
        self._check_free_name(name)
        # ThreadModel._apply: the layers as PEFT expects them; each thread's next forward puts its own mode back
        self._apply(EVAL)
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            with _quiet_peft():
                self.model = get_peft_model(self.model, config, adapter_name=name)
        self.model.eval()
        self._record_adapter(name)
        return name

    @_serialised
    def load_adapter(self, path: str | Path, name: str) -> str:
        """Load a saved LoRA adapter under a new `name`, through the loading gate (`_adapter_gate`): the config from
        an allow-list, the weights checked; PEFT never reads the folder. A refusal leaves nothing registered and the
        base untouched.

        Raises:
            ModelLoadError: no adapter_config.json, unreadable files, pickled weights only.
            AdapterMismatchError: made for another base, or a config or weights the gate does not accept.
            InvalidArgumentError: an adapter called `name` is already loaded.
        """
        path = Path(path)
        if (path.parent / _io.MARKER).is_file():  # a saved result's adapter/: confined to the result's folder
            _io.inside_adapter(path.parent, path.name, "adapter")
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"adapter path {str(path)!r} has no adapter_config.json: pass a folder saved by "
                "PEFT's save_pretrained or by a triangle_nb result's save()."
            )
        self._check_free_name(name)
        self._check_fingerprint(path)
        checked = _adapter_gate.read_adapter(path, self.base_model)  # Backbone.base_model
        with torch.random.fork_rng(devices=[]):  # PEFT's initialisation must not move the user's seeded stream
            self.add_adapter(name, checked.config)
        try:
            self._copy_lora(name, checked.tensors)
        except BaseException:
            self.remove_adapter(name)  # no half-loaded adapter left behind
            raise
        return name

    def _check_free_name(self, name: str) -> None:
        if not isinstance(name, str) or not name or name == BASE or "." in name:
            raise InvalidArgumentError(f"adapter name={name!r} must be a non-empty string without dots (and not "
                                       f"{BASE!r}).")
        if name in self.adapters:
            raise InvalidArgumentError(f"adapter name={name!r} is already loaded on {self.name!r}; loading over it "
                                       "would change the policies using it. Pass another name= (or "
                                       "backbone.unique_adapter_name(stem)), or remove_adapter it first.")

    def _copy_lora(self, name: str, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy checked LoRA factors into adapter `name`'s fresh parameters (frozen: loaded adapters do not train)."""
        params = {n: p for n, p in self.model.named_parameters() if f".{name}." in n and ".lora_" in n}
        wanted = {f"base_model.model.{mod}.{part}.{name}.weight": t
                  for mod, (a, b) in tensors.items() for part, t in (("lora_A", a), ("lora_B", b))}
        if set(params) != set(wanted):
            raise AdapterMismatchError(f"adapter {name!r}: PEFT built {len(params)} LoRA weights, the file has "
                                       f"{len(wanted)}; load it on the base model it was trained for.")
        with torch.no_grad():
            for key, t in wanted.items():
                params[key].copy_(t.to(params[key].dtype))
                params[key].requires_grad_(False)

    def _check_fingerprint(self, path: Path) -> None:
        meta = path / "triangle_nb_base.json"
        if meta.is_file():
            theirs = read_json(meta)
            if theirs != self.fingerprint():  # Backbone.fingerprint
                raise AdapterMismatchError(
                    f"adapter {str(path)!r} was trained for a base with {theirs}, but this base has "
                    f"{self.fingerprint()}. Load it on the base model it was trained for."
                )

    @_serialised
    def save_adapter(self, name: str, folder: Path) -> None:
        """Write adapter `name` (safetensors) plus the base fingerprint into `folder`."""
        assert isinstance(self.model, PeftModel)
        self.model.save_pretrained(str(folder), selected_adapters=[name], safe_serialization=True)
        sub = folder / name  # PEFT nests non-default adapters in a subfolder
        if sub.is_dir():
            for f in sub.iterdir():
                f.replace(folder / f.name)
            sub.rmdir()
        (folder / "triangle_nb_base.json").write_text(json.dumps(self.fingerprint()))  # Backbone.fingerprint

    @_serialised
    def remove_adapter(self, name: str) -> None:
        """Remove adapter `name` from the backbone and free its weights; policies using it can no longer run.

        Raises:
            BackboneBusyError: a live training run (a panel's job) trains it.
            InvalidArgumentError: no adapter of that name is loaded.
        """
        if name not in self.adapters:
            raise InvalidArgumentError(f"remove_adapter({name!r}): no adapter of that name on {self.name!r} "
                                       f"(loaded: {self.adapters}).")
        if any(r.adapter == name for r in self._runs):
            raise BackboneBusyError(f"remove_adapter({name!r}): a running job is training it: wait for the panel's "
                                    "job or press Stop, then remove it.")
        self._apply(EVAL)  # ThreadModel._apply
        if self.adapters == [name]:  # the last one: PEFT would keep it "active" and fail on the next forward;
            self.model = self.model.unload()  # unwrap to the plain model instead
        else:
            with warnings.catch_warnings():  # "was active which is now deleted": the next forward names its own
                warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
                self.model.delete_adapter(name)
            self._live_active_adapter()

    def _live_active_adapter(self) -> None:
        """PEFT keeps a deleted adapter "active" when the remaining ones wrap other modules (a q/v adapter deleted
        beside an MLP one), and every later call fails on it: make a remaining adapter the active one (which
        weights train stays the caller's call)."""
        if self.model.active_adapter in self.model.peft_config:
            return
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.set_adapter(next(iter(self.model.peft_config)))
        for p, trainable in flags:
            p.requires_grad_(trainable)

    def _record_adapter(self, name: str) -> None:
        for made in self._recorders():  # ThreadModel._recorders
            made.adapters[name] = self.model.peft_config[name]

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        if isinstance(self.model, PeftModel) and self.adapters:
            with self.model.disable_adapter():
                yield
        else:
            yield


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Wrapping a model, PEFT reads `is_gradient_checkpointing`, deprecated in transformers 5: a FutureWarning (with
    the reader's site-packages path) in every notebook that trains, about nothing the user can change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


LORA_TARGETS = ("q_proj", "v_proj")  # PEFT's own default for Llama-family models (the LoRA paper's choice)


def default_lora_config(r: int = 8, alpha: int | None = None, dropout: float = 0.0,
                        targets: Sequence[str] = LORA_TARGETS) -> LoraConfig:
    """LoRA on the query and value projections, alpha = 2 r (one rule for every arrow): 1.8 MB for the embedded
    model at r = 8 (on all seven projections at r = 16 it was 19.6 MB), so that baked adapters ship in the package."""
    return LoraConfig(r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=list(targets))
