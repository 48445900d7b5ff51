/**
 * The triangle navigator in the left sidebar. The drawing and the card are widgets/triangle.js, the same ES
 * module that renders `tnb.panels.Triangle` in a notebook, driven here by a small in-browser stand-in for the
 * anywidget model; below the card, buttons act on the selected arrow.
 */
import { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';

import triangle, { IWidgetModel } from '../../widgets/triangle.js';
import { ARROWS } from './data';
import { CommandIDs, IArrow } from './types';

/** The traits triangle.js reads (`arrows`, `selected`), kept in the browser: no kernel behind the sidebar. */
class LocalModel implements IWidgetModel {
  private values: Record<string, unknown>;
  private handlers = new Map<string, Set<() => void>>();

  constructor(values: Record<string, unknown>) {
    this.values = { ...values };
  }
  get(name: string): unknown {
    return this.values[name];
  }
  set(name: string, value: unknown): void {
    this.values[name] = value;
    this.handlers.get(`change:${name}`)?.forEach(callback => callback());
  }
  save_changes(): void {} // nothing to sync
  on(event: string, callback: () => void): void {
    this.handlers.set(event, (this.handlers.get(event) ?? new Set()).add(callback));
  }
  off(event: string, callback: () => void): void {
    this.handlers.get(event)?.delete(callback);
  }
}

function button(label: string, className: string, onClick: () => void): HTMLButtonElement {
  const node = document.createElement('button');
  node.className = `jp-mod-styled ${className}`;
  node.textContent = label;
  node.addEventListener('click', onClick);
  return node;
}

export class TriangleSidebar extends Widget {
  readonly model = new LocalModel({ arrows: ARROWS, selected: '' });
  private teardown: () => void;

  constructor(commands: CommandRegistry) {
    super();
    this.addClass('tnb-sidebar');
    const head = document.createElement('div');
    head.className = 'tnb-sidebar-head';
    head.append(
      Object.assign(document.createElement('h2'), { textContent: 'Triangle of adaptation' }),
      button('Open the tour', 'jp-mod-reject tnb-sidebar-tour', () => void commands.execute(CommandIDs.tour))
    );
    const drawing = document.createElement('div');
    const actions = document.createElement('div');
    actions.className = 'tnb-sidebar-actions';
    const arrow = (): IArrow | undefined => ARROWS.find(a => a.key === this.model.get('selected'));
    const run = (command: string) => () => void commands.execute(command, { arrow: arrow()?.key ?? '' });
    actions.append(
      button('Open the notebook', 'jp-mod-reject tnb-sidebar-open', run(CommandIDs.open)),
      button("Insert this arrow's panel", 'jp-mod-accept tnb-sidebar-insert', run(CommandIDs.insert))
    );
    const showActions = () => (actions.hidden = !arrow());
    this.model.on('change:selected', showActions);
    showActions();
    this.node.append(head, drawing, actions);
    this.teardown = triangle.render({ model: this.model, el: drawing });
  }

  dispose(): void {
    this.teardown();
    super.dispose();
  }
}
