// The triangle navigator: three vertices, six arrows (an SVG). Clicking an arrow sets the
// synced trait `selected`; the side card shows that arrow's equation, methods and applications.
// Synced traits (Python: triangle_nb.panels.Triangle): arrows (list of dicts), selected (str).

const SVG = "http://www.w3.org/2000/svg";
const W = 460, H = 380;
const VERTICES = {
  update: { x: 230, y: 58, label: ["Parameter", "update"], sub: "π0 → π*" },
  reward: { x: 70, y: 318, label: ["Reward", "model"], sub: "r(x, y)" },
  prompt: { x: 390, y: 318, label: ["In-context", "prompt"], sub: "z" },
};
const RADIUS = 50;

function svg(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// Endpoints of one arrow: the segment between two vertex circles, shifted sideways by `offset`
// so the two directions of an edge run side by side.
function geometry(from, to, offset) {
  const a = VERTICES[from], b = VERTICES[to];
  const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy);
  const ux = dx / len, uy = dy / len, nx = -uy, ny = ux;
  const pad = RADIUS + 10;
  return {
    x1: a.x + ux * pad + nx * offset, y1: a.y + uy * pad + ny * offset,
    x2: b.x - ux * pad + nx * offset, y2: b.y - uy * pad + ny * offset,
    mx: (a.x + b.x) / 2 + nx * offset * 2.6, my: (a.y + b.y) / 2 + ny * offset * 2.6,
  };
}

// Marker ids are page-global: each drawing gets its own (a notebook's navigator and the sidebar's are two drawings
// on one page, from two copies of this module, and an arrow that pointed at the other's marker lost its head
// whenever that one was hidden). A random suffix: a counter would restart in each copy.
const uniqueSuffix = () => Math.random().toString(36).slice(2, 10);

function drawDefs(root, heads) {
  const defs = svg("defs", {}, root);
  for (const [id, cls] of [[heads.off, "tnb-head"], [heads.on, "tnb-head tnb-head-on"]]) {
    const m = svg("marker", { id, viewBox: "0 0 10 10", refX: "8", refY: "5", markerWidth: "5",
                              markerHeight: "5", orient: "auto-start-reverse" }, defs);
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: cls }, m);
  }
}

function drawVertex(root, key) {
  const v = VERTICES[key];
  const g = svg("g", { class: `tnb-vertex tnb-vertex-${key}` }, root);
  svg("circle", { cx: v.x, cy: v.y, r: RADIUS }, g);
  v.label.forEach((line, i) => {
    const t = svg("text", { x: v.x, y: v.y - 10 + i * 17, class: "tnb-vertex-label" }, g);
    t.textContent = line;
  });
  const s = svg("text", { x: v.x, y: v.y + 30, class: "tnb-vertex-sub" }, g);
  s.textContent = v.sub;
}

function drawArrow(root, arrow, onClick, heads) {
  const gm = geometry(arrow.source, arrow.target, arrow.offset);
  const g = svg("g", { class: "tnb-arrow", "data-arrow": arrow.key, tabindex: "0", role: "button" }, root);
  svg("line", { x1: gm.x1, y1: gm.y1, x2: gm.x2, y2: gm.y2, class: "tnb-arrow-hit" }, g);
  svg("line", { x1: gm.x1, y1: gm.y1, x2: gm.x2, y2: gm.y2, class: "tnb-arrow-line",
                "marker-end": `url(#${heads.off})` }, g);
  svg("circle", { cx: gm.mx, cy: gm.my, r: 12, class: "tnb-arrow-badge" }, g);
  const n = svg("text", { x: gm.mx, y: gm.my + 4.5, class: "tnb-arrow-number" }, g);
  n.textContent = String(arrow.number);
  const tip = svg("title", {}, g);
  tip.textContent = `${arrow.number}. ${arrow.title}`;
  g.addEventListener("click", () => onClick(arrow.key));
  g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") onClick(arrow.key); });
  return g;
}

function list(items) {
  const ul = document.createElement("ul");
  for (const item of items || []) {
    const li = document.createElement("li");
    li.textContent = item;
    ul.appendChild(li);
  }
  return ul;
}

function section(card, title, body) {
  const h = document.createElement("div");
  h.className = "tnb-card-heading";
  h.textContent = title;
  card.append(h, body);
}

// The card's equations arrive as MathML text (a synced trait). They are parsed in an inert document and copied
// element by element through an allow-list: MathML's layout elements and attributes and <br>; any other element
// becomes its plain text, and no markup string is ever assigned to the page.
const MATHML = "http://www.w3.org/1998/Math/MathML";
const MATH_TAGS = new Set(["math", "mrow", "mi", "mo", "mn", "msub", "msup", "msubsup", "mfrac", "mspace", "mtext"]);
const MATH_ATTRS = new Set(["mathvariant", "stretchy", "width", "minsize"]);

function mathFrom(markup) {
  const doc = new DOMParser().parseFromString(`<div>${markup}</div>`, "text/html");
  const out = document.createDocumentFragment();
  doc.body.firstChild.childNodes.forEach((node) => copyMath(node, out));
  return out;
}

function copyMath(node, parent) {
  if (node.nodeType === Node.TEXT_NODE) {
    parent.appendChild(document.createTextNode(node.textContent));
  } else if (node.nodeType === Node.ELEMENT_NODE && node.localName === "br") {
    parent.appendChild(document.createElement("br"));
  } else if (node.nodeType === Node.ELEMENT_NODE && node.namespaceURI === MATHML && MATH_TAGS.has(node.localName)) {
    const el = document.createElementNS(MATHML, node.localName);
    for (const a of node.attributes) {
      if (MATH_ATTRS.has(a.name)) el.setAttribute(a.name, a.value);
    }
    node.childNodes.forEach((child) => copyMath(child, el));
    parent.appendChild(el);
  } else if (node.nodeType === Node.ELEMENT_NODE) {
    parent.appendChild(document.createTextNode(node.textContent));
  }
}

function fillCard(card, arrow) {
  card.replaceChildren();
  if (!arrow) {
    const p = document.createElement("p");
    p.className = "tnb-card-hint";
    p.textContent = "Click an arrow to see what it does: its equation, its methods, where it is used.";
    card.appendChild(p);
    return;
  }
  const title = document.createElement("div");
  title.className = "tnb-card-title";
  title.textContent = `${arrow.number}. ${arrow.title}`;
  const eq = document.createElement("div");
  eq.className = "tnb-card-equation";
  if (arrow.equation_html) {
    eq.append(mathFrom(arrow.equation_html)); // MathML made in Python (panels/_maths.py), as in the panels' headers
  } else {
    eq.textContent = arrow.equation;
  }
  const summary = document.createElement("p");
  summary.className = "tnb-card-summary";
  summary.textContent = arrow.summary;
  card.append(title, summary, eq);
  section(card, "Methods", list(arrow.methods));
  section(card, "Applications", list(arrow.applications));
  const code = document.createElement("code");
  code.className = "tnb-card-call";
  code.textContent = arrow.call;
  section(card, "In triangle_nb", code);
}

function render({ model, el }) {
  el.classList.add("tnb-triangle");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "tnb-triangle-svg",
                            "aria-label": "The triangle of LLM adaptation" });
  const suffix = uniqueSuffix();
  const heads = { off: `tnb-head-${suffix}`, on: `tnb-head-on-${suffix}` };
  drawDefs(root, heads);
  const select = (key) => { model.set("selected", key); model.save_changes(); };
  const groups = (model.get("arrows") || []).map((a) => drawArrow(root, a, select, heads));
  Object.keys(VERTICES).forEach((k) => drawVertex(root, k));
  const card = document.createElement("div");
  card.className = "tnb-card";
  el.append(root, card);

  const update = () => {
    const key = model.get("selected");
    const arrow = (model.get("arrows") || []).find((a) => a.key === key);
    for (const g of groups) {
      const on = g.getAttribute("data-arrow") === key;
      g.classList.toggle("tnb-arrow-selected", on);
      g.querySelector(".tnb-arrow-line").setAttribute("marker-end", `url(#${on ? heads.on : heads.off})`);
    }
    fillCard(card, arrow);
  };
  model.on("change:selected", update);
  update();
  return () => model.off("change:selected", update);
}

export default { render };
