"""The JupyterLab extension (labextension/, built into the wheel by setup.py): installed, served, and used.

Without a browser: `jupyter labextension list` shows it enabled, its cards are the Python side's, and JupyterLab
serves the notebooks it ships. In Chromium (the helpers of test_browser.py): the launcher card opens the tour
(copied into the Jupyter root), the insert command without a notebook notifies, and the sidebar navigator inserts
an arrow's panel into a notebook, where it runs on the real default model. Screenshots go under the test's tmp dir
($TNB_SCREENSHOTS also gets a copy).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import nbformat
import pytest
from jupyter_core.paths import jupyter_path
from test_browser import ARGS, CHROMIUM, KERNEL_IDLE, _free_port, _settings, _shot, _wait_for_server, assert_typeset

ROOT = Path(__file__).resolve().parents[1]
NAME = "triangle_nb"


def _installed() -> Path:
    """The installed prebuilt extension (share/jupyter/labextensions/triangle_nb of this environment)."""
    for folder in jupyter_path("labextensions"):
        if (Path(folder) / NAME / "package.json").is_file():
            return Path(folder) / NAME
    if shutil.which("node") is None:
        pytest.skip("node is not installed, so `pip install` built no JupyterLab extension")
    pytest.fail("the triangle_nb JupyterLab extension is not installed: rerun `pip install -e .`")


def _generator():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "labextension" / "scripts" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labextension_list_shows_it_enabled():
    _installed()
    jupyter = Path(sys.executable).with_name("jupyter")
    done = subprocess.run([str(jupyter), "labextension", "list"], capture_output=True, text=True, timeout=120, check=False)
    text = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # no colour codes
    assert re.search(r"triangle_nb v\S+ enabled\s+OK \(python, triangle_nb\)", text), text


def test_installed_extension_is_prebuilt_and_managed_by_pip():
    ext = _installed()
    install = json.loads((ext / "install.json").read_text())
    assert install["packageManager"] == "python" and install["packageName"] == NAME
    build = json.loads((ext / "package.json").read_text())["jupyterlab"]["_build"]
    assert (ext / build["load"]).is_file() and build["extension"] == "./extension"


def test_cards_come_from_the_python_side():
    from triangle_nb import panels

    cards = _generator().arrows()
    assert [{k: v for k, v in c.items() if k not in ("panel", "notebook")} for c in cards] == panels.triangle.CARDS
    assert all("<math>" in c["equation_html"] for c in cards)  # the same MathML as the notebook's navigator
    for card in cards:
        assert panels.PANELS[card["key"]].__name__ == card["panel"]
        assert (ROOT / "notebooks" / card["notebook"]).is_file()


def test_the_generator_names_what_is_missing(tmp_path, monkeypatch):
    gen = _generator()
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    (tmp_path / "m.py").write_text("OTHER = 1\n")
    with pytest.raises(gen.GenerateError, match="no module-level `ARROWS"):
        gen._literal(tmp_path / "m.py", "ARROWS")
    with pytest.raises(gen.GenerateError, match="notebooks/00_tour.ipynb is missing"):
        gen._url("00_tour.ipynb")


# -- a JupyterLab on loopback ----------------------------------------------------------------------------------


def _scratch_notebook(folder: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "scratch.ipynb")


@pytest.fixture()
def lab(tmp_path):
    """(base url, token, root folder) of a JupyterLab whose root holds only scratch.ipynb; stopped afterwards."""
    work = tmp_path / "work"
    work.mkdir()
    _scratch_notebook(work)
    port, token = _free_port(), secrets.token_hex(16)
    env = os.environ | {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
                        "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--LabApp.expose_app_in_browser=True", f"--LabServerApp.app_settings_dir={_settings(tmp_path)}",
           # a fresh layout: no workspace or user settings left by an earlier run (the launcher must show)
           f"--LabServerApp.workspaces_dir={tmp_path / 'workspaces'}",
           f"--LabServerApp.user_settings_dir={tmp_path / 'user-settings'}", "--allow-root"]
    with open(tmp_path / "lab.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_server(url, token, proc, tmp_path / "lab.log")
            yield url, token, work
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_jupyterlab_loads_it_and_serves_the_shipped_notebooks(lab):
    url, token, _ = lab
    page = _get(f"{url}/lab?token={token}").decode()
    config = json.loads(re.search(r'id="jupyter-config-data"[^>]*>\s*(.+?)\s*</script>', page, re.DOTALL).group(1))
    assert NAME in [e["name"] for e in config["federated_extensions"]]
    shipped = sorted((_installed() / "static" / "notebooks").glob("*.ipynb"))
    assert [p.name.split(".")[0] for p in shipped] == ["00_tour", *(c["notebook"][:-6] for c in _generator().arrows())]
    tour = next(p for p in shipped if p.name.startswith("00_tour."))
    served = json.loads(_get(f"{url}/lab/extensions/{NAME}/static/notebooks/{tour.name}"))
    assert served == json.loads((ROOT / "notebooks" / "00_tour.ipynb").read_text())


# -- in Chromium ------------------------------------------------------------------------------------------------


def _notified(page, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(".Toastify__toast", has_text=text).first).to_be_visible(timeout=15_000)


@pytest.mark.browser
@pytest.mark.slow  # the notebook it opens loads the real model
def test_launcher_sidebar_and_commands_in_jupyterlab(lab, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed: apt-get update && apt-get install -y chromium")
    pytest.importorskip("playwright", reason="pip install playwright (never `playwright install`: we use Debian's)")
    _installed()
    from playwright.sync_api import expect, sync_playwright

    url, token, work = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        try:
            page.goto(f"{url}/lab?token={token}")
            cards = page.locator(".jp-LauncherCard", has=page.locator(".jp-LauncherCard-label"))
            tour_card = cards.filter(has_text="Triangle of adaptation")
            expect(tour_card).to_be_visible(timeout=60_000)
            expect(cards.filter(has_text="2. Parameter update ⇒ reward model")).to_be_visible()
            icons = [cards.filter(has_text=f"{n}. ").first.locator(".jp-LauncherCard-icon svg").inner_html()
                     for n in range(1, 7)]
            assert len(set(icons)) == 6 and all("polygon" in i for i in icons)  # each card: its own arrow's direction
            _shot(page, tmp_path, "labext_launcher.png")

            # the palette lists the commands under the extension's category
            page.evaluate("window.jupyterapp.commands.execute('apputils:activate-command-palette')")
            page.locator(".lm-CommandPalette-input").fill("insert the panel of arrow")
            items = page.locator(".lm-CommandPalette-item", has_text="Insert the panel of arrow")
            expect(items).to_have_count(6)
            _shot(page, tmp_path, "labext_palette.png")
            page.keyboard.press("Escape")

            # 1. no notebook open: the insert command notifies instead of failing
            page.evaluate("window.jupyterapp.commands.execute('triangle_nb:insert-panel', {arrow: 'update_to_reward'})")
            _notified(page, "Open a notebook first")

            # 2. the tour card copies the tour into the Jupyter root and opens it
            assert not (work / "00_tour.ipynb").exists()
            tour_card.click()
            expect(page.locator(".lm-DockPanel .lm-TabBar-tab", has_text="00_tour.ipynb")).to_be_visible(timeout=30_000)
            copied = json.loads((work / "00_tour.ipynb").read_text())
            assert copied["cells"] == json.loads((ROOT / "notebooks" / "00_tour.ipynb").read_text())["cells"]
            _shot(page, tmp_path, "labext_tour.png")

            # 3. the sidebar: click an arrow, read its card, insert its panel into the scratch notebook
            page.evaluate("window.jupyterapp.commands.execute('docmanager:open', {path: 'scratch.ipynb'})")
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            page.locator(".jp-SideBar .lm-TabBar-tab[data-id='triangle_nb-sidebar']").click()
            sidebar = page.locator("#triangle_nb-sidebar")
            sidebar.locator(".tnb-arrow[data-arrow='reward_to_prompt']").click()  # the widest equations
            expect(sidebar.locator(".tnb-card-equation")).to_contain_text("Eq. 17")
            assert_typeset(sidebar.locator(".tnb-card-equation"))
            card, side = sidebar.locator(".tnb-card").bounding_box(), sidebar.bounding_box()
            assert card["x"] + card["width"] <= side["x"] + side["width"] + 1, (card, side)  # fits the sidebar
            sidebar.locator(".tnb-arrow[data-arrow='update_to_reward']").click()
            expect(sidebar.locator(".tnb-card-title")).to_contain_text("Parameter update ⇒ reward model")
            expect(sidebar.locator(".tnb-card-equation")).to_contain_text("Eq. 7")
            assert_typeset(sidebar.locator(".tnb-card-equation"))
            sidebar.evaluate("node => node.scrollTo(0, 0)")
            _shot(sidebar, tmp_path, "labext_sidebar.png")
            sidebar.get_by_role("button", name="Insert this arrow's panel").click()
            notebook = page.locator(".jp-NotebookPanel:visible")
            expect(notebook.locator(".jp-OutputArea .tnb-panel").first).to_be_visible(timeout=180_000)
            sources = notebook.locator(".jp-CodeCell .jp-InputArea-editor")
            expect(sources.nth(0)).to_contain_text("pi0 = tnb.load_policy()")
            expect(sources.nth(1)).to_contain_text("tnb.panels.UpdateToRewardPanel(pi0)")
            page.wait_for_function(KERNEL_IDLE, timeout=60_000)
            _shot(page, tmp_path, "labext_panel_inserted.png")

            # 4. the sidebar opens the arrow's own notebook, copied like the tour
            sidebar.get_by_role("button", name="Open the notebook").click()
            tab = page.locator(".lm-DockPanel .lm-TabBar-tab", has_text="02_update_to_reward.ipynb")
            expect(tab).to_be_visible(timeout=30_000)
            assert (work / "02_update_to_reward.ipynb").is_file()
        except Exception:
            _shot(page, tmp_path, "labext_failure.png")
            raise
        finally:
            browser.close()
