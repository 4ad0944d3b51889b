// Parts of a page marked data-live="1" are replaced, every data-every ms, by the HTML their
// data-refresh URL returns (the same template the page was built with); a part whose fresh copy
// is no longer live (its run ended) stops polling. Plots are drawn from the JSON beside them.
"use strict";

function poll(el) {
  const every = Number(el.dataset.every) || 2000;
  setTimeout(async () => {
    try {
      const reply = await fetch(el.dataset.refresh, {cache: "no-store"});
      if (reply.ok) {
        const holder = document.createElement("div");
        holder.innerHTML = (await reply.text()).trim();
        const fresh = holder.firstElementChild;
        if (fresh) {
          el.replaceWith(fresh);
          if (fresh.dataset.live === "1") poll(fresh);
          return;
        }
      }
    } catch (e) {
      // the viewer restarted or the network blinked: try again at the next tick
    }
    poll(el);
  }, every);
}

function drawPlots() {
  if (typeof Plotly === "undefined") return;
  document.querySelectorAll('script[type="application/json"][data-plot]').forEach((spec) => {
    const figure = JSON.parse(spec.textContent);
    Plotly.newPlot(spec.dataset.plot, figure.data, figure.layout, {responsive: true, displaylogo: false});
    const target = spec.dataset.click;      // a device map: a click opens that cell's history
    if (target) {
      document.getElementById(spec.dataset.plot).on("plotly_click", (event) => {
        const point = event.points[0];
        window.location.href = target.replace("{row}", point.y).replace("{col}", point.x);
      });
    }
  });
}

document.querySelectorAll('[data-refresh][data-live="1"]').forEach(poll);
drawPlots();
