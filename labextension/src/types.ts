/** One arrow of the triangle, as `triangle_nb.panels.triangle.ARROWS` describes it (see scripts/generate.py). */
export interface IArrow {
  key: string; // the arrow's module name, e.g. "reward_to_update"
  number: number;
  source: string;
  target: string;
  offset: number;
  title: string;
  summary: string;
  equation: string;
  equation_html: string;
  methods: string[];
  applications: string[];
  call: string;
  panel: string; // the panel class in tnb.panels, e.g. "RewardToUpdatePanel"
  notebook: string; // the tutorial's file name, e.g. "01_reward_to_update.ipynb"
}

/** The extension's command ids (the palette, the launcher and the sidebar all go through them). */
export const CommandIDs = {
  tour: 'triangle_nb:open-tour',
  open: 'triangle_nb:open-notebook',
  insert: 'triangle_nb:insert-panel'
};
