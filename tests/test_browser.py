"""A real browser: JupyterLab on loopback, driven by Python playwright with Debian's Chromium.

Opens a notebook that shows the triangle navigator and two panels on the real default model,
runs it, clicks an arrow (the info card must change), moves a β slider (the displayed output
must change), and saves screenshots under the test's tmp dir ($TNB_SCREENSHOTS also gets a copy).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # its notebook loads the real model

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
CELLS = [
    "import triangle_nb as tnb\npi0 = tnb.load_policy()",
    "# the navigator: click an arrow\ntnb.panels.navigator(pi0)",
    "# a second navigator on the same page: its arrows keep their own heads; its first card's equation carries\n"
    "# markup besides MathML, which must stay inert text\n"
    "cards = [dict(c) for c in tnb.panels.triangle.CARDS]\n"
    "cards[0]['equation_html'] += '<img src=x onerror=\"document.title=`pwned`\"><b onclick=\"x()\">bold</b>'\n"
    "tnb.panels.Triangle(arrows=cards, selected='reward_to_update')",
    "# panel 2: steer with the log-ratio reward of a cheerful vs a gloomy prompt\n"
    "p2 = tnb.panels.UpdateToRewardPanel(pi0, max_new_tokens=8)\np2.run()\np2",
    "# a token heatmap on its own\n"
    "tnb.panels.TokenHeatmap(['The', ' rain', ' is', ' lovely', ' but', ' cold', '.'],\n"
    "                        [0.1, -0.4, 0.0, 1.2, -0.3, -0.9, 0.05], label='a hand-made example')",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "panels.ipynb"
    nbformat.write(nb, path)
    return path


def _settings(folder: Path) -> Path:
    settings = folder / "lab-settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps({
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    }))
    return settings


@pytest.fixture()
def lab(tmp_path):
    """(base url, token) of a JupyterLab serving tmp_path/work; stopped after the test."""
    work = tmp_path / "work"
    work.mkdir()
    _write_notebook(work)
    port, token = _free_port(), secrets.token_hex(16)
    env = os.environ | {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
                        "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # 1 thread: far faster on a busy CI box
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--LabApp.expose_app_in_browser=True", f"--LabServerApp.app_settings_dir={_settings(tmp_path)}",
           "--allow-root"]
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, proc, tmp_path / "lab.log")
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_for_server(url: str, token: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _shot(page_or_locator, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page_or_locator.screenshot(path=str(path))
    if extra := os.environ.get("TNB_SCREENSHOTS"):
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


KERNEL_IDLE = ("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
               " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
               " return !!k && k.status === 'idle'; }")


HEADS = """() => [...document.querySelectorAll('.tnb-triangle-svg')].map((svg) => ({
    visible: svg.getBoundingClientRect().width > 0,
    ids: [...svg.querySelectorAll('marker')].map((m) => m.id),
    ends: [...svg.querySelectorAll('.tnb-arrow-line')].map((l) => l.getAttribute('marker-end')),
    all: [...document.querySelectorAll('marker')].map((m) => m.id)}))"""


LATEX_LEFTOVERS = ("_{", "^{", "\\", "$")


def assert_typeset(node) -> None:
    """The maths in `node` is typeset (MathML, one converter for cards, sidebar and panels): a <math> element and no
    LaTeX left in the text a reader sees."""
    assert node.locator("math").count() >= 1, node.inner_html()[:300]
    text = node.inner_text()
    assert not any(s in text for s in LATEX_LEFTOVERS), text


def assert_labels_whole(panel) -> None:
    """No field label of a panel is cut: each shown label's text fits its box (widgets/panel.css lets them wrap)."""
    cut = panel.evaluate("p => [...p.querySelectorAll('.widget-label')].filter(l => l.offsetParent !== null"
                         " && l.scrollWidth > l.clientWidth + 1).map(l => l.textContent)")
    assert not cut, cut


def _assert_arrowheads(page, expect) -> None:
    """Every arrow of every navigator on the page (two in the notebook; the sidebar's with it closed, then open)
    points at a marker of its own drawing, and no marker id is used twice on the page."""
    expect(page.locator(".jp-Notebook .tnb-triangle-svg")).to_have_count(2, timeout=60_000)
    for state in ("closed", "open"):
        if state == "open":
            page.evaluate("window.jupyterapp.shell.activateById('triangle_nb-sidebar')")
            expect(page.locator(".tnb-sidebar .tnb-triangle-svg")).to_be_visible(timeout=10_000)
        else:
            page.evaluate("window.jupyterapp.shell.collapseLeft()")
            expect(page.locator(".tnb-sidebar .tnb-triangle-svg")).to_be_hidden(timeout=10_000)
        drawings = page.evaluate(HEADS)
        assert sum(d["visible"] for d in drawings) == (2 if state == "closed" else 3), (state, drawings)
        all_ids = drawings[0]["all"]
        assert len(all_ids) == len(set(all_ids)), f"sidebar {state}: marker ids used twice: {all_ids}"
        for d in drawings:
            own = {f"url(#{i})" for i in d["ids"]}
            assert d["ends"] and set(d["ends"]) <= own, f"sidebar {state}: arrows point outside their drawing: {d}"


def test_navigator_and_panels_in_jupyterlab(lab, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed: apt-get update && apt-get install -y chromium")
    pytest.importorskip("playwright", reason="pip install playwright (never `playwright install`: we use Debian's)")
    from playwright.sync_api import expect, sync_playwright

    url, token = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.goto(f"{url}/lab/tree/panels.ipynb?token={token}")
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

            # 1. the navigator renders; clicking an arrow changes the info card (the notebook's navigator: the
            #    sidebar of the JupyterLab extension holds a second one, hidden while the sidebar is closed)
            card = page.locator(".jp-Notebook .tnb-card").first
            expect(card).to_be_visible(timeout=60_000)
            before = card.inner_text()
            page.locator(".jp-Notebook .tnb-arrow[data-arrow='reward_to_update']").first.click()
            expect(page.locator(".jp-Notebook .tnb-card-title").first).to_contain_text("Reward model ⇒ parameter update")
            assert card.inner_text() != before
            assert_typeset(card.locator(".tnb-card-equation"))
            expect(page.locator(".tnb-panel").first).to_be_visible(timeout=30_000)  # its panel opened
            _shot(page.locator(".jp-Notebook .tnb-triangle").first, tmp_path, "navigator.png")
            _assert_arrowheads(page, expect)
            hostile = page.locator(".jp-Notebook .tnb-triangle").nth(1).locator(".tnb-card-equation")
            expect(hostile).to_contain_text("bold", timeout=30_000)  # the foreign elements became their text
            assert_typeset(hostile)  # the MathML itself is kept
            assert hostile.locator("img, b, script").count() == 0 and page.title() != "pwned"

            # 2. panel 2 ran on the real model: a heatmap of the log-ratio reward and the two generations
            panel = page.locator(".tnb-panel", has=page.locator(".tnb-heatmap")).first
            label = panel.locator(".tnb-heatmap-label")
            expect(label).to_contain_text("β = 1", timeout=90_000)
            expect(panel.locator("table.tnb-samples")).to_be_visible(timeout=60_000)
            panel.scroll_into_view_if_needed()
            assert_labels_whole(panel)
            _shot(panel, tmp_path, "panel2_beta1.png")
            label_before, table_before = label.inner_text(), panel.locator("table.tnb-samples").inner_text()

            # 3. move the β slider: the heatmap rescales at once (cached log-probs), generation re-steers
            readout = panel.locator(".widget-slider", has_text="β").locator(".widget-readout").first
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("4")
            page.keyboard.press("Enter")
            expect(label).to_contain_text("β = 4", timeout=10_000)
            assert label.inner_text() != label_before
            expect(panel.locator("table.tnb-samples")).to_contain_text("β = 4", timeout=60_000)
            assert panel.locator("table.tnb-samples").inner_text() != table_before
            expect(panel.locator("table.tnb-samples")).not_to_contain_text("▌", timeout=60_000)  # tokens streamed in
            page.wait_for_function(KERNEL_IDLE, timeout=30_000)
            _shot(panel, tmp_path, "panel2_beta4.png")
            _shot(page, tmp_path, "lab.png")
        except Exception:
            _shot(page, tmp_path, "failure.png")
            raise
        finally:
            browser.close()
    assert (tmp_path / "panel2_beta4.png").stat().st_size > 10_000
