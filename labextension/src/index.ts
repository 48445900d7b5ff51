/**
 * triangle_nb in JupyterLab: launcher cards for the tour and the six arrow notebooks, the triangle navigator in the
 * left sidebar, and palette commands (category "Triangle of adaptation") that open a notebook or insert an arrow's
 * panel into the current one. Everything the extension shows comes from the Python package (see scripts/generate.py).
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { insertPanel, openNotebook } from './actions';
import { ARROWS, TOUR } from './data';
import { TriangleSidebar } from './navigator';
import { CommandIDs, IArrow } from './types';

const CATEGORY = 'Triangle of adaptation';

export const triangleIcon = new LabIcon({
  name: 'triangle_nb:triangle',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M12 4 L4 19 L20 19 Z" fill="none"' +
    ' stroke="#6b46c1" stroke-width="1.6" stroke-linejoin="round"/><circle cx="12" cy="4.5" r="2.6" fill="#2b6cb0"/>' +
    '<circle cx="4.5" cy="19" r="2.6" fill="#c05621"/><circle cx="19.5" cy="19" r="2.6" fill="#2f855a"/></svg>'
});

const findArrow = (args: { arrow?: unknown }): IArrow | undefined => ARROWS.find(a => a.key === args.arrow);

// The icon's vertices, as in the navigator: update on top, reward bottom left, prompt bottom right.
const ICON_VERTICES: Record<string, [number, number]> = { update: [12, 4.5], reward: [4.5, 19], prompt: [19.5, 19] };

/** The triangle with one arrow drawn bold from its source to its target vertex: each card shows its direction. */
function arrowIconSvg(arrow: IArrow): string {
  const [ax, ay] = ICON_VERTICES[arrow.source];
  const [bx, by] = ICON_VERTICES[arrow.target];
  const len = Math.hypot(bx - ax, by - ay);
  const [ux, uy] = [(bx - ax) / len, (by - ay) / len];
  const [sx, sy, tx, ty] = [ax + 3.4 * ux, ay + 3.4 * uy, bx - 3.4 * ux, by - 3.4 * uy]; // off the dots
  const head = [
    [tx, ty],
    [tx - 3.2 * ux - 1.9 * uy, ty - 3.2 * uy + 1.9 * ux],
    [tx - 3.2 * ux + 1.9 * uy, ty - 3.2 * uy - 1.9 * ux]
  ]
    .map(([x, y]) => `${x.toFixed(2)},${y.toFixed(2)}`)
    .join(' ');
  return (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path d="M12 4 L4 19 L20 19 Z" fill="none"' +
    ' stroke="#cbd2d9" stroke-width="1.2" stroke-linejoin="round"/>' +
    '<circle cx="12" cy="4.5" r="2.2" fill="#2b6cb0"/><circle cx="4.5" cy="19" r="2.2" fill="#c05621"/>' +
    '<circle cx="19.5" cy="19" r="2.2" fill="#2f855a"/>' +
    `<line x1="${sx.toFixed(2)}" y1="${sy.toFixed(2)}" x2="${(tx - 2 * ux).toFixed(2)}" y2="${(ty - 2 * uy).toFixed(2)}"` +
    ` stroke="#6b46c1" stroke-width="2"/><polygon points="${head}" fill="#6b46c1"/></svg>`
  );
}

const ARROW_ICONS: Record<string, LabIcon> = Object.fromEntries(
  ARROWS.map(a => [a.key, new LabIcon({ name: `triangle_nb:arrow-${a.key}`, svgstr: arrowIconSvg(a) })])
);

function arrowOf(args: { arrow?: unknown }): IArrow {
  const arrow = findArrow(args);
  if (!arrow) {
    throw new Error(`arrow=${JSON.stringify(args.arrow)} is not one of ${ARROWS.map(a => a.key).join(', ')}`);
  }
  return arrow;
}

/** "Reward model ⇒ parameter update (§2)" -> "Reward model ⇒ parameter update" */
const shortTitle = (arrow: IArrow): string => arrow.title.replace(/\s*\(§\d+\)$/, '');

// Labels never throw (JupyterLab renders them without args, e.g. in the shortcuts editor); execute does.
function addCommands(app: JupyterFrontEnd, tracker: INotebookTracker): void {
  app.commands.addCommand(CommandIDs.tour, {
    label: args => (args.isLauncher ? 'Triangle of adaptation' : 'Open the tour (00_tour.ipynb)'),
    caption: 'Open the tour of the triangle of LLM adaptation (copied into the Jupyter root if missing)',
    icon: triangleIcon,
    execute: () => openNotebook(app, TOUR)
  });
  app.commands.addCommand(CommandIDs.open, {
    label: args => {
      const arrow = findArrow(args);
      if (!arrow) {
        return "Open an arrow's notebook";
      }
      return args.isLauncher ? `${arrow.number}. ${shortTitle(arrow)}` : `Open notebook ${arrow.notebook}`;
    },
    caption: args =>
      `Open the tutorial of arrow ${findArrow(args)?.title ?? ''} (copied into the Jupyter root if missing)`,
    icon: args => ARROW_ICONS[String(args.arrow)] ?? triangleIcon,
    execute: args => openNotebook(app, arrowOf(args).notebook)
  });
  app.commands.addCommand(CommandIDs.insert, {
    label: args => {
      const arrow = findArrow(args);
      return arrow ? `Insert the panel of arrow ${arrow.number}: ${shortTitle(arrow)}` : "Insert an arrow's panel";
    },
    caption: args =>
      `Insert and run tnb.panels.${findArrow(args)?.panel ?? '<Arrow>Panel'}(pi0) in the current notebook`,
    icon: triangleIcon,
    execute: args => insertPanel(tracker.currentWidget, arrowOf(args))
  });
}

function addLauncherCards(launcher: ILauncher): void {
  launcher.add({ command: CommandIDs.tour, args: { isLauncher: true }, category: CATEGORY, rank: 0 });
  for (const arrow of ARROWS) {
    const args = { isLauncher: true, arrow: arrow.key };
    launcher.add({ command: CommandIDs.open, args, category: CATEGORY, rank: arrow.number });
  }
}

function addPaletteItems(palette: ICommandPalette): void {
  palette.addItem({ command: CommandIDs.tour, category: CATEGORY });
  for (const arrow of ARROWS) {
    palette.addItem({ command: CommandIDs.open, args: { arrow: arrow.key }, category: CATEGORY });
    palette.addItem({ command: CommandIDs.insert, args: { arrow: arrow.key }, category: CATEGORY });
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'triangle_nb:plugin',
  description: 'Launcher cards, a sidebar navigator and commands for the triangle of LLM adaptation.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILauncher, ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    launcher: ILauncher | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    addCommands(app, tracker);
    const sidebar = new TriangleSidebar(app.commands);
    sidebar.id = 'triangle_nb-sidebar';
    sidebar.title.icon = triangleIcon;
    sidebar.title.caption = CATEGORY;
    app.shell.add(sidebar, 'left', { rank: 850 });
    restorer?.add(sidebar, sidebar.id);
    if (launcher) {
      addLauncherCards(launcher);
    }
    if (palette) {
      addPaletteItems(palette);
    }
  }
};

export default plugin;
