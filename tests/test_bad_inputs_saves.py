"""Saves that lose nothing (issue 29, class 4): a save never deletes the user's files, never turns a file into a
folder, keeps training checkpoints next to the result, and a kill at any point of the swap is repaired by the next
load or save (the old copy or the new one, never nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import triangle_nb as tnb
from triangle_nb import _io
from triangle_nb.errors import InvalidArgumentError
from triangle_nb.results import PromptResult

pytestmark = pytest.mark.usefixtures("one_thread")


def result(v: int) -> PromptResult:
    return PromptResult(metrics={"v": v}, prompt=tnb.Prompt(system=f"version {v}"))


def version(folder: Path) -> int:
    return int(PromptResult.load(folder).metrics["v"])


def checkpoint(folder: Path, step: int) -> Path:
    ck = folder / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "triangle_nb_checkpoint.json").write_text("{}")
    (ck / "optimizer.pt").write_bytes(b"state")
    return ck


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- refused targets: nothing written, nothing lost ------------------------------------------------------

def _user_folder(tmp: Path) -> Path:
    (tmp / "t").mkdir()
    (tmp / "t" / "thesis.tex").write_text("years of work")
    return tmp / "t"


def _user_folder_with_result_names(tmp: Path) -> Path:
    (tmp / "t").mkdir()
    (tmp / "t" / "result.json").write_text('{"mine": true}')
    return tmp / "t"


def _nested_user_folder(tmp: Path) -> Path:
    (tmp / "t" / "data").mkdir(parents=True)
    (tmp / "t" / "data" / "x.csv").write_text("1,2")
    return tmp / "t"


def _regular_file(tmp: Path) -> Path:
    (tmp / "t").write_text("a file")
    return tmp / "t"


def _symlink_to_folder(tmp: Path) -> Path:
    (tmp / "real").mkdir()
    (tmp / "real" / "keep.txt").write_text("keep")
    os.symlink(tmp / "real", tmp / "t")
    return tmp / "t"


def _symlink_to_file(tmp: Path) -> Path:
    (tmp / "f.txt").write_text("keep")
    os.symlink(tmp / "f.txt", tmp / "t")
    return tmp / "t"


def _damaged_marker(tmp: Path) -> Path:
    (tmp / "t").mkdir()
    (tmp / "t" / _io.MARKER).write_text("{not json")
    (tmp / "t" / "notes.txt").write_text("mine")
    return tmp / "t"


def _checkpoints_and_user_file(tmp: Path) -> Path:
    checkpoint(tmp / "t", 2)
    (tmp / "t" / "notes.txt").write_text("mine")
    return tmp / "t"


def _fake_checkpoint(tmp: Path) -> Path:
    (tmp / "t" / "checkpoint-5").mkdir(parents=True)  # no triangle_nb metadata: someone else's
    (tmp / "t" / "checkpoint-5" / "model.bin").write_bytes(b"x")
    return tmp / "t"


def _hidden_user_file(tmp: Path) -> Path:
    (tmp / "t").mkdir()
    (tmp / "t" / ".env").write_text("SECRET=1")
    return tmp / "t"


REFUSED: list[tuple[str, Callable[[Path], Path], str]] = [
    ("user_folder", _user_folder, "did not write"),
    ("user_folder_result_names", _user_folder_with_result_names, "did not write"),
    ("nested_user_folder", _nested_user_folder, "did not write"),
    ("regular_file", _regular_file, "is a file"),
    ("symlink_to_folder", _symlink_to_folder, "symbolic link"),
    ("symlink_to_file", _symlink_to_file, "symbolic link"),
    ("damaged_marker", _damaged_marker, "did not write"),
    ("checkpoints_and_user_file", _checkpoints_and_user_file, "did not write"),
    ("fake_checkpoint", _fake_checkpoint, "did not write"),
    ("hidden_user_file", _hidden_user_file, "did not write"),
]


def _save_result(target: Path) -> Any:
    return result(1).save(target)


def _save_composition(target: Path) -> Any:
    from triangle_nb.algebra import save_composition
    from triangle_nb.testing import tiny_policy

    return save_composition(_tiny(tiny_policy), target)


_TINY: list[Any] = []


def _tiny(factory: Callable[[], Any]) -> Any:
    if not _TINY:
        _TINY.append(factory())
    return _TINY[0]


def _save_raw(target: Path) -> Any:
    with _io.atomic_dir(target) as tmp:
        (tmp / "x").write_text("new")


SAVERS = [("result", _save_result), ("composition", _save_composition), ("atomic_dir", _save_raw)]


@pytest.mark.parametrize("saver", SAVERS, ids=[s[0] for s in SAVERS])
@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_target_that_is_not_ours_is_refused_untouched(case: tuple, saver: tuple, tmp_path: Path) -> None:
    _, make, fragment = case
    target = make(tmp_path)
    before = snapshot(tmp_path)
    links = {p: os.readlink(p) for p in tmp_path.rglob("*") if p.is_symlink()}
    with pytest.raises(InvalidArgumentError) as info:
        saver[1](target)
    assert fragment in str(info.value) and "folder=" in str(info.value)
    assert snapshot(tmp_path) == before
    assert {p: os.readlink(p) for p in tmp_path.rglob("*") if p.is_symlink()} == links
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".t.")]  # no leftovers


# -- accepted targets: what is not ours is kept ----------------------------------------------------------

def test_readme_pattern_keeps_checkpoints_and_result(tmp_path: Path) -> None:
    """train(output_dir="runs/dpo") then res.save("runs/dpo"): the checkpoints stay beside the result, and the
    next save replaces only the result's own files."""
    run = tmp_path / "runs" / "dpo"
    checkpoint(run, 2)
    checkpoint(run, 4)
    result(1).save(run)
    assert version(run) == 1 and (run / "checkpoint-2" / "optimizer.pt").read_bytes() == b"state"
    checkpoint(run, 6)  # training again into the same folder
    result(2).save(run)
    assert version(run) == 2
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_files_added_to_a_saved_result_are_kept(tmp_path: Path) -> None:
    result(1).save(tmp_path / "r")
    (tmp_path / "r" / "notes.txt").write_text("mine")
    (tmp_path / "r" / "bake.json").write_text("{}")
    result(2).save(tmp_path / "r")
    assert version(tmp_path / "r") == 2
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine" and (tmp_path / "r" / "bake.json").exists()


def test_a_kept_file_is_never_overwritten(tmp_path: Path) -> None:
    with _io.atomic_dir(tmp_path / "r") as tmp:
        (tmp / "a").write_text("ours")
    (tmp_path / "r" / "b").write_text("the user's")
    with pytest.raises(InvalidArgumentError, match="would overwrite"):
        with _io.atomic_dir(tmp_path / "r") as tmp:
            (tmp / "b").write_text("ours now")
    assert (tmp_path / "r" / "b").read_text() == "the user's" and (tmp_path / "r" / "a").read_text() == "ours"


def test_a_result_saved_before_the_marker_is_ours(tmp_path: Path) -> None:
    """Folders older versions saved (no marker) are replaced as before; their checkpoints are kept."""
    run = tmp_path / "old"
    result(1).save(run)
    (run / _io.MARKER).unlink()
    checkpoint(run, 2)
    result(2).save(run)
    assert version(run) == 2 and (run / "checkpoint-2" / "optimizer.pt").exists()


def test_files_of_the_last_save_are_replaced(tmp_path: Path) -> None:
    with _io.atomic_dir(tmp_path / "r") as tmp:
        (tmp / "old_only").write_text("1")
    with _io.atomic_dir(tmp_path / "r") as tmp:
        (tmp / "new_only").write_text("2")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [_io.MARKER, "new_only"]


def test_empty_folder_and_missing_parents_are_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result(1).save(tmp_path / "empty")
    result(2).save(tmp_path / "a" / "b" / "c")
    assert version(tmp_path / "empty") == 1 and version(tmp_path / "a" / "b" / "c") == 2


def test_every_saved_folder_has_the_marker(tmp_path: Path) -> None:
    result(1).save(tmp_path / "r")
    mark = json.loads((tmp_path / "r" / _io.MARKER).read_text())
    assert "result.json" in mark["written"] and _io.MARKER not in mark["written"]


# -- a kill during the swap: the next load or save repairs it --------------------------------------------

class Killed(BaseException):
    """A kill (SIGKILL, power loss) at one point of the swap: nothing after it runs."""


def _kill_at(n: int) -> Callable[..., Any]:
    real, calls = os.replace, [0]

    def replace(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise Killed
        real(src, dst)

    return replace


@pytest.mark.parametrize("with_checkpoints", [False, True], ids=["plain", "checkpoints"])
@pytest.mark.parametrize("kill", range(1, 7), ids=[f"rename{i}" for i in range(1, 7)])
@pytest.mark.parametrize("repair", ["load", "save"])
def test_a_kill_mid_swap_is_repaired(kill: int, with_checkpoints: bool, repair: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    if with_checkpoints:
        checkpoint(run, 2)
    result(1).save(run)
    with monkeypatch.context() as mp:
        mp.setattr(_io.os, "replace", _kill_at(kill))
        try:
            result(2).save(run)
        except Killed:
            pass
    if repair == "load":
        assert version(run) in (1, 2)  # the old copy or the new one, never nothing
    else:
        result(3).save(run)
        assert version(run) == 3
    if with_checkpoints:
        assert (run / "checkpoint-2" / "optimizer.pt").read_bytes() == b"state"
    result(4).save(run)  # and the folder is healthy afterwards
    assert version(run) == 4 and not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


def test_a_first_save_killed_mid_swap_is_completed_by_the_next_load(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(target: Path) -> None:
        raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(_io, "_finish", killed)  # after the finished copy was renamed to .run.new
        with pytest.raises(Killed):
            result(1).save(tmp_path / "run")
    assert not (tmp_path / "run").exists() and (tmp_path / ".run.new").is_dir()
    assert version(tmp_path / "run") == 1


def test_a_crash_while_writing_leaves_the_old_copy_and_no_leftovers(tmp_path: Path) -> None:
    result(1).save(tmp_path / "run")
    with pytest.raises(ZeroDivisionError):
        with _io.atomic_dir(tmp_path / "run") as tmp:
            (tmp / "half").write_text("x")
            1 / 0  # noqa: B018
    assert version(tmp_path / "run") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
