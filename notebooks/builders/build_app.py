"""Writes notebooks/app.ipynb: the navigator and the six panels in tabs, as a page without code under Voilà
(`voila notebooks/app.ipynb`, or Binder's `?urlpath=voila/render/notebooks/app.ipynb`). Execute it after writing:
`jupyter nbconvert --to notebook --execute --inplace notebooks/app.ipynb`."""
from pathlib import Path

import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
    md("""# triangle_nb — the app

The triangle navigator above the six arrow panels, on the embedded SmolLM2-135M-Instruct (offline, CPU). Opened with
Voilà (`voila notebooks/app.ipynb`, or the second Binder link) this page shows no code; in JupyterLab, run the cell
below. The panels are built, not run: press a panel's button to run its arrow on the model."""),
    code("""# NBVAL_IGNORE_OUTPUT
import triangle_nb as tnb

tnb.panels.app()  # the embedded model; tnb.panels.app(tnb.load_policy("org/model")) for another one"""),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
# Voilà's lab template without its CDN links (widgets/voila/triangle, installed by setup.py)
nb.metadata["voila"] = {"template": "triangle"}
nbf.write(nb, str(Path(__file__).resolve().parents[1] / "app.ipynb"))
