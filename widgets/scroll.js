// A zero-height mark above a panel's results: when the panel shows a new result (`tick` grows) and the mark is
// below the visible part of the page (Voilà: the results appear under the window, the user sees only "done"),
// the page scrolls to it. A result already in view is left where it is.
function render({ model, el }) {
  el.classList.add("tnb-scroll-anchor");
  el.style.height = "0px";
  model.on("change:tick", () => {
    const top = el.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight * 0.6) {
      el.scrollIntoView({ behavior: "smooth", block: "start" });
    }
  });
}

export default { render };
