// widgets/triangle.js: the anywidget ES module that draws tnb.panels.Triangle; the sidebar renders it too.
declare module '*/widgets/triangle.js' {
  /** The part of anywidget's model that triangle.js uses. */
  export interface IWidgetModel {
    get(name: string): unknown;
    set(name: string, value: unknown): void;
    save_changes(): void;
    on(event: string, callback: () => void): void;
    off(event: string, callback: () => void): void;
  }
  const widget: { render(props: { model: IWidgetModel; el: HTMLElement }): () => void };
  export default widget;
}
