/** What the commands do: open a shipped notebook (copied into the Jupyter root first), insert an arrow's panel. */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { Contents } from '@jupyterlab/services';

import { NOTEBOOK_URLS } from './data';
import { IArrow } from './types';

export const MODEL_CELL = 'import triangle_nb as tnb\npi0 = tnb.load_policy()';
const HAS_MODEL = /^\s*pi0\s*=/m;

/** A notebook the extension does not ship, or whose shipped copy could not be read. */
export class NotebookNotShippedError extends Error {}

async function exists(contents: Contents.IManager, path: string): Promise<boolean> {
  try {
    await contents.get(path, { content: false });
    return true;
  } catch (error) {
    if ((error as { response?: Response }).response?.status === 404) {
      return false;
    }
    throw error;
  }
}

async function shippedCopy(file: string): Promise<unknown> {
  const url = NOTEBOOK_URLS[file];
  if (!url) {
    throw new NotebookNotShippedError(`${file} is not one of the notebooks triangle_nb ships`);
  }
  const response = await fetch(url);
  if (!response.ok) {
    throw new NotebookNotShippedError(`could not read the shipped ${file}: HTTP ${response.status}`);
  }
  return response.json();
}

/** Open `file` (e.g. "00_tour.ipynb") from the Jupyter root, copying the shipped notebook there if it is missing. */
export async function openNotebook(app: JupyterFrontEnd, file: string): Promise<unknown> {
  const contents = app.serviceManager.contents;
  if (!(await exists(contents, file))) {
    const content = await shippedCopy(file);
    await contents.save(file, { type: 'notebook', format: 'json', content });
  }
  return app.commands.execute('docmanager:open', { path: file });
}

/** Put `source` in the last cell when it is an empty code cell, else in a new cell at the end; then run it. */
function appendAndRun(panel: NotebookPanel, source: string): Promise<boolean> {
  const notebook = panel.content;
  notebook.activeCellIndex = notebook.widgets.length - 1;
  const last = notebook.activeCell;
  if (!last || last.model.type !== 'code' || last.model.sharedModel.getSource().trim()) {
    NotebookActions.insertBelow(notebook);
    NotebookActions.changeCellType(notebook, 'code');
  }
  notebook.activeCell!.model.sharedModel.setSource(source);
  return NotebookActions.run(notebook, panel.sessionContext);
}

/** Run the cell at `index` (a model cell that never ran in this kernel). */
function runCell(panel: NotebookPanel, index: number): Promise<boolean> {
  panel.content.activeCellIndex = index;
  return NotebookActions.run(panel.content, panel.sessionContext);
}

/**
 * Insert and run `tnb.panels.<Panel>(pi0)` in `panel`; a model cell goes first when the notebook has none,
 * and an existing model cell that has not run yet is run first. No notebook: a notification, not an exception.
 */
export async function insertPanel(panel: NotebookPanel | null, arrow: IArrow): Promise<boolean> {
  if (!panel) {
    Notification.warning(`Open a notebook first: "${arrow.title}" inserts its panel into the current notebook.`, {
      autoClose: 6000
    });
    return false;
  }
  await panel.context.ready;
  const runs: Promise<boolean>[] = [];
  const cells = panel.content.widgets;
  const model = cells.findIndex(c => c.model.type === 'code' && HAS_MODEL.test(c.model.sharedModel.getSource()));
  if (model < 0) {
    runs.push(appendAndRun(panel, MODEL_CELL));
  } else if ((cells[model].model as { executionCount?: number | null }).executionCount == null) {
    runs.push(runCell(panel, model));
  }
  runs.push(appendAndRun(panel, `tnb.panels.${arrow.panel}(pi0)`));
  return (await Promise.all(runs)).every(Boolean);
}
