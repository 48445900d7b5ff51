// Token heatmap: tokens coloured by a value (blue > 0, red < 0); hovering a token shows its value.
// Synced traits (Python: triangle_nb.panels.TokenHeatmap): tokens, values, vmax (0 = auto), label.

const POS = [33, 102, 172];
const NEG = [178, 24, 43];

function colour(value, vmax) {
  const a = Math.min(Math.abs(value) / vmax, 1);
  const [r, g, b] = value >= 0 ? POS : NEG;
  return `rgba(${r}, ${g}, ${b}, ${(0.85 * a).toFixed(3)})`;
}

function fmt(v) {
  return (v >= 0 ? "+" : "") + v.toFixed(3);
}

function render({ model, el }) {
  el.classList.add("tnb-heatmap");
  const head = document.createElement("div");
  head.className = "tnb-heatmap-label";
  const body = document.createElement("div");
  body.className = "tnb-heatmap-tokens";
  const readout = document.createElement("div");
  readout.className = "tnb-heatmap-readout";
  el.append(head, body, readout);

  const draw = () => {
    const tokens = model.get("tokens") || [];
    const values = model.get("values") || [];
    const auto = Math.max(1e-9, ...values.map((v) => Math.abs(v)));
    const vmax = model.get("vmax") > 0 ? model.get("vmax") : auto;
    const total = values.reduce((s, v) => s + v, 0);
    head.textContent = `${model.get("label")}   (sum ${fmt(total)}, ${tokens.length} tokens)`;
    body.replaceChildren();
    tokens.forEach((tok, i) => {
      const span = document.createElement("span");
      span.className = "tnb-token";
      span.textContent = tok;
      span.style.background = colour(values[i] ?? 0, vmax);
      if (Math.abs(values[i] ?? 0) / vmax > 0.6) span.classList.add("tnb-token-strong");
      span.title = `${JSON.stringify(tok)}: ${fmt(values[i] ?? 0)}`;
      span.dataset.value = String(values[i] ?? 0);
      span.addEventListener("mouseenter", () => { readout.textContent = span.title; });
      body.appendChild(span);
    });
    readout.textContent = "hover a token to see its value";
  };
  const events = ["change:tokens", "change:values", "change:vmax", "change:label"];
  events.forEach((e) => model.on(e, draw));
  draw();
  return () => events.forEach((e) => model.off(e, draw));
}

export default { render };
