/* USAE concept explorer: index table + scatter, and the concept page. No framework, no network:
   data arrive as scripts (data/index.js, data/c/<id>.js) so the site works from file://. */
(function () {
  "use strict";
  var E = (window.USAE_EXPLORER = window.USAE_EXPLORER || {});

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "\u2013";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    var abs = Math.abs(value);
    if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return value.toExponential(2);
    return value.toPrecision(3);
  }

  function conceptLink(id, text) {
    return el("a", { href: "concept.html#c=" + id, text: text === undefined ? String(id) : text });
  }

  /* ------------------------------------------------------------------ index page */
  function initIndex() {
    var started = performance.now();
    var data = window.USAE_EXPLORER_INDEX;
    var c = data.concepts, n = data.num_concepts, models = data.models;
    var columns = [{ key: "id", label: "concept", values: c.id }];
    if (c.label) columns.push({ key: "label", label: "label", values: c.label, text: true });
    columns.push(
      { key: "energy", label: "energy", values: c.energy },
      { key: "firing_entropy", label: "firing entropy", values: c.firing_entropy },
      { key: "cofire_count", label: "co-fires", values: c.cofire_count },
      { key: "cofire_proportion", label: "co-fire prop. (min)", values: c.cofire_proportion }
    );
    models.forEach(function (m) {
      columns.push({ key: "rate:" + m, label: "rate " + m, values: c.firing_rate[m] });
    });
    columns.push({ key: "unique_to", label: "unique to", values: c.unique_to, text: true });
    Object.keys(c.extra).forEach(function (k) {
      columns.push({ key: "extra:" + k, label: k, values: c.extra[k] });
    });
    var byKey = {};
    columns.forEach(function (col) { byKey[col.key] = col; });
    var fired = new Uint8Array(n);
    for (var i = 0; i < n; i++) {
      var any = false;
      models.forEach(function (m) { if (c.firing_rate[m][i] > 0) any = true; });
      fired[i] = any ? 1 : 0;
    }
    var state = { sort: "energy", dir: -1, page: 0, rows: [] };

    document.getElementById("run").textContent =
      (data.run.title || data.run.workdir || "run") + " \u2014 step " + data.run.step + ", " +
      data.run.architecture + (data.run.sparsity ? " (" + data.run.sparsity + ")" : "") + ", " +
      models.join(" / ") + ", " + n + " concepts, " + data.num_rows + " rows, tau " + data.tau;
    var unique = document.getElementById("unique-filter");
    [["", "unique to: any"], ["none", "shared (no single model)"]].concat(
      models.map(function (m) { return [m, "unique to " + m]; })
    ).forEach(function (o) { unique.appendChild(el("option", { value: o[0], text: o[1] })); });

    var head = el("tr");
    columns.forEach(function (col) {
      var th = el("th", { "data-key": col.key, text: col.label, class: col.text ? "text" : "" });
      th.addEventListener("click", function () {
        state.dir = state.sort === col.key ? -state.dir : col.text || col.key === "id" ? 1 : -1;
        state.sort = col.key;
        update(false);
      });
      head.appendChild(th);
    });
    document.querySelector("#concepts thead").appendChild(head);

    function matches(i, terms) {
      for (var t = 0; t < terms.length; t++) {
        var term = terms[t];
        if (/^\d+$/.test(term)) { if (String(i) !== term) return false; continue; }
        if (term.indexOf("unique:") === 0) {
          if ((c.unique_to[i] || "").toLowerCase() !== term.slice(7)) return false;
          continue;
        }
        if (term === "firing") { if (!fired[i]) return false; continue; }
        var hay = ((c.label ? c.label[i] : "") + " " + (c.unique_to[i] || "")).toLowerCase();
        if (hay.indexOf(term) < 0) return false;
      }
      return true;
    }

    function compare(values, dir) {
      return function (a, b) {
        var x = values[a], y = values[b];
        if (x === y) return a - b;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * dir;
      };
    }

    function update(resetPage) {
      var terms = document.getElementById("search").value.toLowerCase().split(/\s+/)
        .filter(Boolean);
      var only = document.getElementById("firing-only").checked;
      var u = unique.value;
      var rows = [];
      for (var i = 0; i < n; i++) {
        if (only && !fired[i]) continue;
        if (u === "none" && c.unique_to[i] !== null) continue;
        if (u && u !== "none" && c.unique_to[i] !== u) continue;
        if (terms.length && !matches(i, terms)) continue;
        rows.push(i);
      }
      rows.sort(compare(byKey[state.sort].values, state.dir));
      state.rows = rows;
      if (resetPage) state.page = 0;
      var pages = Math.max(1, Math.ceil(rows.length / data.page_rows));
      state.page = Math.min(state.page, pages - 1);
      document.getElementById("count").textContent = rows.length + " of " + n + " concepts";
      document.getElementById("page").textContent = "page " + (state.page + 1) + " / " + pages;
      document.querySelectorAll("#concepts th").forEach(function (th) {
        var on = th.getAttribute("data-key") === state.sort;
        th.classList.toggle("sorted-asc", on && state.dir > 0);
        th.classList.toggle("sorted-desc", on && state.dir < 0);
      });
      renderPage();
      drawScatter();
    }

    function renderPage() {
      var body = document.querySelector("#concepts tbody");
      var start = state.page * data.page_rows;
      var fragment = document.createDocumentFragment();
      state.rows.slice(start, start + data.page_rows).forEach(function (i) {
        var tr = el("tr", { "data-concept": String(i) });
        columns.forEach(function (col) {
          var td = el("td", { class: col.text ? "text" : "" });
          if (col.key === "id") td.appendChild(conceptLink(i));
          else td.textContent = fmt(col.values[i]);
          tr.appendChild(td);
        });
        fragment.appendChild(tr);
      });
      body.textContent = "";
      body.appendChild(fragment);
    }

    /* scatter: canvas, so 10,000+ points stay fast */
    var canvas = document.getElementById("scatter");
    var ctx = canvas.getContext("2d");
    var pad = 40, xs = new Float64Array(n), ys = new Float64Array(n), shown = new Uint8Array(n);
    var xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
    for (i = 0; i < n; i++) {
      shown[i] = c.energy[i] > 0 ? 1 : 0;
      if (!shown[i]) continue;
      xs[i] = Math.log10(1 + c.cofire_count[i]);
      ys[i] = Math.log10(c.energy[i]);
      xmin = Math.min(xmin, xs[i]); xmax = Math.max(xmax, xs[i]);
      ymin = Math.min(ymin, ys[i]); ymax = Math.max(ymax, ys[i]);
    }
    if (!(xmax > xmin)) { xmin -= 1; xmax += 1; }
    if (!(ymax > ymin)) { ymin -= 1; ymax += 1; }
    function px(i) {
      return {
        x: pad + (xs[i] - xmin) / (xmax - xmin) * (canvas.width - 1.5 * pad),
        y: canvas.height - pad - (ys[i] - ymin) / (ymax - ymin) * (canvas.height - 1.5 * pad),
      };
    }
    function colour(entropy, alpha) {
      var t = entropy === null ? 0 : entropy;
      return "rgba(" + Math.round(40 + 200 * t) + "," + Math.round(90 - 40 * t) + "," +
        Math.round(220 - 190 * t) + "," + alpha + ")";
    }
    function drawScatter() {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = "#5a6478";
      ctx.font = "11px sans-serif";
      ctx.fillText("log10(1 + co-fires): " + xmin.toFixed(1) + " \u2026 " + xmax.toFixed(1),
        pad, canvas.height - 12);
      ctx.save();
      ctx.translate(12, canvas.height - pad);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText("log10 energy: " + ymin.toFixed(1) + " \u2026 " + ymax.toFixed(1), 0, 0);
      ctx.restore();
      var inFilter = new Uint8Array(n);
      state.rows.forEach(function (r) { inFilter[r] = 1; });
      for (var pass = 0; pass < 2; pass++) {
        for (var j = 0; j < n; j++) {
          if (!shown[j] || inFilter[j] !== pass) continue;
          var p = px(j);
          ctx.fillStyle = colour(c.firing_entropy[j], pass ? 0.75 : 0.12);
          ctx.fillRect(p.x - 2, p.y - 2, 4, 4);
        }
      }
    }
    canvas.addEventListener("click", function (event) {
      var box = canvas.getBoundingClientRect();
      var x = (event.clientX - box.left) * canvas.width / box.width;
      var y = (event.clientY - box.top) * canvas.height / box.height;
      var best = -1, bestD = 64;
      for (var j = 0; j < n; j++) {
        if (!shown[j]) continue;
        var p = px(j), d = (p.x - x) * (p.x - x) + (p.y - y) * (p.y - y);
        if (d < bestD) { best = j; bestD = d; }
      }
      if (best >= 0) window.location.href = "concept.html#c=" + best;
    });
    /* where concept i is drawn, in CSS pixels of the canvas box (null when not drawn) */
    E.scatterPoint = function (i) {
      if (!shown[i]) return null;
      var p = px(i), box = canvas.getBoundingClientRect();
      return { x: p.x * box.width / canvas.width, y: p.y * box.height / canvas.height };
    };

    document.getElementById("search").addEventListener("input", function () { update(true); });
    document.getElementById("firing-only").addEventListener("change", function () {
      update(true);
    });
    unique.addEventListener("change", function () { update(true); });
    document.getElementById("prev").addEventListener("click", function () {
      state.page = Math.max(0, state.page - 1);
      update(false);
    });
    document.getElementById("next").addEventListener("click", function () {
      state.page += 1;
      update(false);
    });
    update(true);
    E.renderMs = performance.now() - started;
    E.readyMs = performance.now();
    document.body.setAttribute("data-ready", "1");
  }

  /* ------------------------------------------------------------------ concept page */
  function histogram(h) {
    var ns = "http://www.w3.org/2000/svg", w = 260, hgt = 90, bins = h.counts.length;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w);
    svg.setAttribute("height", hgt + 16);
    svg.setAttribute("role", "img");
    var top = Math.max.apply(null, h.counts.concat([1]));
    h.counts.forEach(function (count, b) {
      var r = document.createElementNS(ns, "rect");
      var bh = count / top * hgt;
      r.setAttribute("x", b * w / bins + 1);
      r.setAttribute("y", hgt - bh);
      r.setAttribute("width", Math.max(1, w / bins - 2));
      r.setAttribute("height", bh);
      r.setAttribute("class", "bar");
      var title = document.createElementNS(ns, "title");
      title.textContent = fmt(h.edges[b]) + "\u2013" + fmt(h.edges[b + 1]) + ": " + count;
      r.appendChild(title);
      svg.appendChild(r);
    });
    [[0, "start", h.edges[0]], [w, "end", h.edges[bins]]].forEach(function (a) {
      var t = document.createElementNS(ns, "text");
      t.setAttribute("x", a[0]);
      t.setAttribute("y", hgt + 12);
      t.setAttribute("text-anchor", a[1]);
      t.setAttribute("class", "axis");
      t.textContent = fmt(a[2]);
      svg.appendChild(t);
    });
    return svg;
  }

  function context(text) {
    var p = el("div", { class: "context" });
    text.tokens.forEach(function (token, j) {
      p.appendChild(el("span", { class: j === text.highlight ? "hit" : "", text: token }));
      p.appendChild(document.createTextNode(" "));
    });
    return p;
  }

  function renderConcept(d) {
    var root = document.getElementById("concept");
    root.textContent = "";
    document.title = "Concept " + d.concept;
    document.getElementById("title").textContent = "Concept " + d.concept +
      (d.label ? " (" + d.label + ")" : "") + (d.unique_to ? " \u2014 unique to " + d.unique_to : "");
    document.getElementById("prev-concept").setAttribute("href", "#c=" + Math.max(0, d.concept - 1));
    document.getElementById("next-concept").setAttribute(
      "href", "#c=" + Math.min(d.num_concepts - 1, d.concept + 1));
    var rows = [
      ["energy (summed over models)", d.energy], ["firing entropy", d.firing_entropy],
      ["co-fire count (fires for every model)", d.cofire_count],
      ["co-fire proportion (min over models)", d.cofire_proportion],
    ];
    Object.keys(d.extra).forEach(function (k) { rows.push([k, d.extra[k]]); });
    var summary = el("table", { class: "summary" });
    rows.forEach(function (r) {
      summary.appendChild(el("tr", {}, [el("td", { text: r[0] }), el("td", { text: fmt(r[1]) })]));
    });
    root.appendChild(el("section", {}, [el("h2", { text: "Summary" }), summary]));

    var grid = el("div", { class: "models" });
    d.models.forEach(function (m) {
      var pm = d.per_model[m];
      var box = el("section", { class: "model", "data-model": m }, [
        el("h2", { text: m + (pm.label ? " \u2014 " + pm.label : "") }),
        el("p", {
          text: "fires on " + pm.fire_count + " rows (rate " + fmt(pm.firing_rate) +
            "), co-fire prop. " + fmt(pm.cofire_proportion) + ", energy " + fmt(pm.energy) +
            ", energy share " + fmt(pm.energy_share) + ", mean code " + fmt(pm.mean_activation),
        }),
      ]);
      if (pm.images.length) {
        box.appendChild(el("h3", { text: "Top images (heatmap: this concept's code)" }));
        var images = el("div", { class: "images" });
        pm.images.forEach(function (im) {
          images.appendChild(el("figure", {}, [
            el("img", { src: im.src, alt: "image " + im.image }),
            el("figcaption", { text: "img " + im.image + ", max " + fmt(im.max) }),
          ]));
        });
        box.appendChild(images);
      }
      box.appendChild(el("h3", { text: "Top-activating rows" }));
      if (!pm.top_examples.length) box.appendChild(el("p", { class: "missing", text: "never fires" }));
      var list = el("ol", { class: "examples" });
      pm.top_examples.forEach(function (ex) {
        var item = el("li", { text: "row " + ex.row + ": " + fmt(ex.value) });
        if (ex.text) item.appendChild(context(ex.text));
        list.appendChild(item);
      });
      box.appendChild(list);
      box.appendChild(el("h3", { text: "Firing histogram (codes above tau)" }));
      box.appendChild(histogram(pm.histogram));
      box.appendChild(el("h3", { text: "Nearest concepts in " + m + "'s dictionary" }));
      var near = el("ul", { class: "links" });
      pm.nearest.forEach(function (nb) {
        near.appendChild(el("li", {}, [conceptLink(nb.concept), " cos " + fmt(nb.cosine)]));
      });
      box.appendChild(near);
      grid.appendChild(box);
    });
    root.appendChild(grid);

    var cof = el("ul", { class: "links" });
    d.cofiring.forEach(function (p) {
      cof.appendChild(el("li", {}, [
        conceptLink(p.concept), " on " + p.count + " rows (" + fmt(p.proportion) + " of its firings)",
      ]));
    });
    if (!d.cofiring.length) cof.appendChild(el("li", { class: "missing", text: "none" }));
    root.appendChild(el("section", {}, [
      el("h2", { text: "Fires together with (same row, same model)" }), cof,
    ]));
    if (d.cam.length) {
      var cam = el("div", { class: "cam" });
      d.cam.forEach(function (im) {
        cam.appendChild(el("figure", {}, [
          el("img", { src: im.src, alt: "CAM " + im.label }),
          el("figcaption", { text: im.label + ", reached " + fmt(im.final_pre) }),
        ]));
      });
      root.appendChild(el("section", {}, [el("h2", { text: "CAM images" }), cam]));
    }
    document.body.setAttribute("data-ready", String(d.concept));
  }

  function initConcept() {
    var script = null;
    E.receive = renderConcept;
    function load() {
      var match = /c=(\d+)/.exec(window.location.hash);
      var id = match ? match[1] : "0";
      document.body.removeAttribute("data-ready");
      if (script) script.remove();
      script = el("script", { src: "data/c/" + id + ".js" });
      script.onerror = function () {
        document.getElementById("concept").textContent = "No concept " + id + " in this site.";
      };
      document.body.appendChild(script);
    }
    window.addEventListener("hashchange", load);
    load();
  }

  if (document.body.getAttribute("data-page") === "index") initIndex();
  else initConcept();
})();
