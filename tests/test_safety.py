"""Safe by default (issue #9): weights load from safetensors or GGUF only, nothing evals or execs text,
no pickle is ever opened, remote code is an explicit opt-in, and the test JupyterLab binds to loopback.
"""

from __future__ import annotations

import inspect
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

import triangle_nb as tnb
from triangle_nb import loading
from triangle_nb.errors import ModelLoadError

ROOT = Path(tnb.__file__).parent
REPO = ROOT.parent

FORBIDDEN = {
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "eval(": re.compile(r"(?<![\w.])eval\s*\("),  # model.eval() is fine: only the builtin
    "exec(": re.compile(r"(?<![\w.])exec\s*\("),
    "pickle.load": re.compile(r"\bpickle\.loads?\s*\(|\bdill\.|\bjoblib\.load"),
    "yaml.load(": re.compile(r"\byaml\.load\s*\("),  # yaml.safe_load only
    "shell=True": re.compile(r"shell\s*=\s*True"),
}


def _sources() -> list[Path]:
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 10
    return files


def _strip_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith(('"', "'")) else line
                     for line in text.splitlines())


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_package_has_no_unsafe_calls(name: str) -> None:
    hits = [f"{path.relative_to(REPO)}:{i}" for path in _sources()
            for i, line in enumerate(_strip_comments(path.read_text(encoding="utf-8")).splitlines(), 1)
            if FORBIDDEN[name].search(line)]
    assert hits == [], f"{name} found in {hits}"


def test_every_torch_load_is_weights_only() -> None:
    calls = [(path, m) for path in _sources() for m in re.finditer(r"torch\.load\s*\(", path.read_text())]
    for path, m in calls:
        args = path.read_text()[m.end(): m.end() + 300].split(")\n", 1)[0]
        assert "weights_only=True" in args, f"torch.load without weights_only=True in {path.name}"


def test_widgets_do_not_eval_text() -> None:
    scripts = [p for d in (REPO / "widgets", ROOT / "_widgets") if d.is_dir() for p in d.rglob("*.js")]
    for path in scripts:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?<![\w.])eval\s*\(|new\s+Function\s*\(", text), path
        assert ".innerHTML" not in text, f"{path.name}: set model/user text with textContent, not innerHTML"


def test_the_grep_patterns_work() -> None:
    assert FORBIDDEN["eval("].search("score = eval(text)") and not FORBIDDEN["eval("].search("model.eval()")
    assert FORBIDDEN["exec("].search("exec(code)") and not FORBIDDEN["exec("].search("self.exec_step()")
    assert FORBIDDEN["trust_remote_code=True"].search("f(x, trust_remote_code = True)")


def test_load_policy_asks_for_safetensors_and_no_remote_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert inspect.signature(tnb.load_policy).parameters["trust_remote_code"].default is False
    calls: list[dict[str, Any]] = []

    class Spy:
        @staticmethod
        def from_pretrained(source: str, **kwargs: Any) -> Any:
            calls.append(kwargs)
            raise OSError("spy: stop here")

    monkeypatch.setattr(loading, "AutoTokenizer", Spy)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError):
        tnb.load_policy(tmp_path)
    assert calls and calls[0]["trust_remote_code"] is False
    monkeypatch.setattr(loading, "AutoTokenizer", type("Tok", (), {"from_pretrained": staticmethod(lambda s, **k: None)}))
    monkeypatch.setattr(loading, "AutoModelForCausalLM", Spy)
    with pytest.raises(ModelLoadError):
        tnb.load_policy(tmp_path)
    assert calls[-1]["use_safetensors"] is True and calls[-1]["trust_remote_code"] is False


class _Payload:
    """A pickle that, if ever unpickled, leaves a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.marker.touch, ())


def test_pickled_weights_are_refused_unopened(tmp_path: Path) -> None:
    from triangle_nb.testing import tiny_policy

    tiny = tiny_policy()
    model_dir = tmp_path / "model"
    tiny.model.config.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    marker = tmp_path / "pwned"
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelLoadError, match="safetensors"):
        tnb.load_policy(model_dir)
    assert not marker.exists()


def test_test_jupyterlab_binds_loopback_with_a_random_token() -> None:
    browser = REPO / "tests" / "test_browser.py"
    if not browser.is_file():
        pytest.skip("no browser test in this checkout")
    text = browser.read_text()
    assert "--ip=127.0.0.1" in text and "secrets.token_hex" in text
    assert "--ip=0.0.0.0" not in text and "token=''" not in text and 'token=""' not in text
