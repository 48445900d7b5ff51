"""Atomic writes: write to a temporary sibling, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import InvalidArgumentError, ModelLoadError

T = TypeVar("T")


MARKER = ".triangle_nb"  # in every folder `atomic_dir` writes: {"written": [the entries that save wrote]}
_CHECKPOINT_META = "triangle_nb_checkpoint.json"  # training.CHECKPOINT_META (no import: training imports _io)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, owned: bool = False, name: str = "folder") -> Iterator[Path]:
    """Yield a temporary directory that replaces `target` when the block succeeds; nothing of the user's is lost.

    - `target` may be missing, empty, or a folder of ours (it holds MARKER): the entries the previous save wrote are
      replaced, anything else in it (training checkpoints of `output_dir`, a bake's bake.json, the user's notes) is
      kept. A folder holding only training checkpoints (`checkpoint-<step>/` with triangle_nb's metadata: the
      README's `output_dir="runs/dpo"` then `res.save("runs/dpo")`) counts as ours. Any other non-empty folder, a
      regular file or a symbolic link is refused before anything is written. `owned=True` (the model cache):
      the whole of `target` is ours to replace.
    - The swap is journaled by name: the finished copy is renamed to `.<name>.new`, the old one to `.<name>.old`,
      then the new one into place. A kill at any point is repaired by `recover(target)`, which the next save and
      every load run first: the new copy is completed (the old one's kept entries carried over).

    Raises:
        InvalidArgumentError: `target` is a file, a link, or a folder of someone else's (names `name`).
    """
    target = Path(os.path.abspath(target))
    recover(target)
    _check_target(target, owned, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        written = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
        (tmp / MARKER).write_text(json.dumps({"written": written, "owned": owned}), encoding="utf-8")
        _check_target(target, owned, name)  # again: something may have appeared meanwhile
        _check_no_clash(target, written, owned, name)
        os.replace(tmp, _sibling(target, "new"))
        _finish(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover(target: str | os.PathLike[str]) -> None:
    """Repair a save of `target` that was killed mid-swap (see `atomic_dir`): complete the new copy, or bring the
    old one back when no complete new copy exists. Cheap when there is nothing to repair."""
    target = Path(os.path.abspath(target))
    new, old = _sibling(target, "new"), _sibling(target, "old")
    if new.is_dir() and (new / MARKER).is_file():
        _finish(target)
    elif old.is_dir() and not os.path.lexists(target):
        os.replace(old, target)
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    if new.exists() and not (new / MARKER).is_file():
        shutil.rmtree(new, ignore_errors=True)  # never finished: the old copy (or nothing) stays


def _sibling(target: Path, what: str) -> Path:
    return target.with_name(f".{target.name}.{what}")


def _finish(target: Path) -> None:
    """Swap `.name.new` into place, carrying over the old copy's entries that were not ours to replace (first, so
    the window without a result at `target` is two renames long)."""
    new, old = _sibling(target, "new"), _sibling(target, "old")
    current = target if os.path.lexists(target) else old
    if current.is_dir():
        for entry in _kept(current):
            if not os.path.lexists(new / entry):
                os.replace(current / entry, new / entry)
    if os.path.lexists(target):
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)  # a leftover of a swap that had already completed
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _ours(folder: Path) -> dict[str, Any] | None:
    """The folder's MARKER contents, or None when it has none (or a damaged one)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("written"), list) else None


def _legacy(folder: Path) -> dict[str, Any] | None:
    """A result, composition or bake saved before the marker existed (result.json / composition.json with a kind,
    bake.json with a key): all of it counts as written by that save, except training checkpoints."""
    for name, key in (("result.json", "kind"), ("composition.json", "kind"), ("bake.json", "key")):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            continue
        if isinstance(data, dict) and isinstance(data.get(key), str):
            return {"written": [p.name for p in folder.iterdir() if not _is_checkpoint(p)]}
    return None


def _kept(folder: Path) -> list[str]:
    """The entries of an existing `folder` a new save keeps: all but the marker and what the last save wrote."""
    mark = _ours(folder) or _legacy(folder) or {"written": []}
    if mark.get("owned"):
        return []
    replaced = {str(n) for n in mark["written"]} | {MARKER}
    return sorted(p.name for p in folder.iterdir() if p.name not in replaced)


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and path.name.startswith("checkpoint-") \
        and (path / _CHECKPOINT_META).is_file()


def _check_target(target: Path, owned: bool, name: str) -> None:
    if target.is_symlink():
        raise InvalidArgumentError(f"{name}={str(target)!r} is a symbolic link: pass the real folder it points to "
                                   "(or a new folder); nothing was written.")
    if target.exists() and not target.is_dir():
        raise InvalidArgumentError(f"{name}={str(target)!r} is a file, not a folder: pass a folder path (a save "
                                   "writes several files); the file was left as it is.")
    if owned or not target.is_dir() or _ours(target) is not None or _legacy(target) is not None:
        return
    foreign = sorted(p.name for p in target.iterdir() if not _is_checkpoint(p))
    if foreign:
        raise InvalidArgumentError(f"{name}={str(target)!r} already holds files triangle_nb did not write "
                                   f"({', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}): pass a new or "
                                   "empty folder (or one a triangle_nb save wrote); nothing was written.")


def _check_no_clash(target: Path, written: list[str], owned: bool, name: str) -> None:
    """A kept entry of the old folder (the user's file, a checkpoint) never shares a name with a new one."""
    if owned or not target.is_dir():
        return
    clash = sorted(set(_kept(target)) & set(written))
    if clash:
        raise InvalidArgumentError(f"{name}={str(target)!r} holds {clash[0]!r}, which triangle_nb did not write but "
                                   "this save would overwrite: move it away or save to another folder; nothing "
                                   "was written.")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a saved JSON file; a missing or damaged file is a ModelLoadError naming the path."""
    path = Path(path)
    if not path.exists():
        recover(path.parent)  # a save of that folder killed mid-swap: complete it first
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{str(path)!r} does not exist: check the path.") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{str(path)!r} is a folder, not a saved JSON file: check the path.") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{str(path)!r} is not valid JSON ({str(exc)[:200]}): the file is damaged; save it "
                             "again.") from exc
    if not isinstance(data, dict):  # every file triangle_nb saves holds one JSON object
        raise ModelLoadError(f"{str(path)!r} holds a JSON {type(data).__name__}, not an object: the file was edited or "
                             "damaged; save it again.")
    return data


def inside(folder: str | os.PathLike[str], relative: object, field: str) -> Path:
    """`folder / relative` for a path read from a saved file, confined to `folder`: a relative path without `..`,
    through no symbolic link, that stays inside `folder` once resolved.

    Raises:
        ModelLoadError: the path leaves the folder (names `field`); a shared folder cannot point elsewhere.
    """
    folder = Path(folder)
    bad = not isinstance(relative, str) or not relative or "\\" in relative or "\x00" in relative
    parts = Path(relative).parts if not bad else ()
    if bad or Path(relative).is_absolute() or relative.startswith("~") or ".." in parts or not parts:
        raise ModelLoadError(f"{str(folder)!r}: {field}={relative!r} is not a plain relative path inside the folder "
                             "(absolute paths, '..' and '~' are refused): the folder was edited; save it again.")
    path = folder
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise ModelLoadError(f"{str(folder)!r}: {field}={relative!r} goes through the symbolic link "
                                 f"{str(path)!r}; a saved folder holds its own files: save it again.")
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ModelLoadError(f"{str(folder)!r}: {field}={relative!r} leaves the folder: save it again.")
    return path


def inside_adapter(folder: str | os.PathLike[str], relative: str, field: str) -> Path:
    """An adapter folder of a saved result or composition, confined to `folder` with the files it holds."""
    path = inside(folder, relative, field)
    for name in ("adapter_config.json", "adapter_model.safetensors", "triangle_nb_base.json"):
        if os.path.lexists(path / name):
            inside(folder, f"{relative.rstrip('/')}/{name}", field)
    return path


def parsed(folder: str | os.PathLike[str], build: Callable[[], T]) -> T:
    """`build()` (which reads a saved folder's files), with a hand-edited or damaged file — a missing key, a
    value of the wrong type, a missing or corrupt parquet file — as a ModelLoadError naming the folder."""
    from .errors import TriangleError

    try:
        return build()
    except TriangleError:
        raise
    except (KeyError, TypeError, ValueError, OSError, RecursionError) as exc:
        raise ModelLoadError(f"{str(folder)!r} holds a damaged or hand-edited save ({type(exc).__name__}: "
                             f"{str(exc)[:160]}): save it again.") from exc
