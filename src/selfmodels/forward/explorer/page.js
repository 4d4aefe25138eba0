// The explorer's script: reads the JSON embedded in the page, builds every view with DOM text nodes
// (token text is never parsed as HTML). No network, no library.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("explorer-data").textContent);
  const S = { layer: 0, scaleMax: 1, cats: new Set(), view: "text", selected: null };
  window.explorer = { data: D, state: S, select: select, showLayer: showLayer, shade: shade };

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.append(c);
    return node;
  }
  const fmt = (v, d) => (v === null || v === undefined ? "–" : (typeof v === "number" ? Number(v.toPrecision(d || 4)).toString() : String(v)));
  const word = (id) => (D.vocab[String(id)] !== undefined ? D.vocab[String(id)] : "#" + id);
  const visible = (text) => text.replace(/\n/g, "↵").replace(/\t/g, "⇥");  // for token names shown out of their text
  const catNames = (bits) => D.categories.filter((_, i) => bits & (1 << i));
  const layer = () => D.layers[S.layer];

  // Shade of a normalised error: transparent at 0, full red at the scale's maximum (and beyond).
  function shade(e) {
    const a = Math.min(Math.max(e / S.scaleMax, 0), 1);
    return "rgba(215, 38, 38, " + a.toFixed(3) + ")";
  }

  // --- header ------------------------------------------------------------------------------------
  function header() {
    const h = D.header, s = h.subject, f = h.forward_model;
    const top = document.getElementById("top");
    top.append(el("h1", { text: D.title }));
    top.append(el("div", { class: "meta", text:
      "subject " + s.name + " (" + s.family + ", " + fmt(s.params, 6) + " parameters, " + s.n_layers + " blocks, d = " + s.d_model +
      ") · layers " + h.pairs.join(", ") + " · corpus " + h.corpus + " · forward model " + fmt(f.params, 6) + " parameters (" +
      fmt(100 * f.share_of_main, 3) + "% of the subject; " + (h.training || "") + ") · " + h.eval_tokens + " held-out tokens (" +
      h.eval_sequences + " × " + h.seq_len + ")" }));
    const table = el("table", { class: "numbers", id: "numbers" });
    for (const [name, value, baseName, baseValue] of h.numbers) {
      table.append(el("tr", {}, [el("td", { text: name }), el("td", { class: "v", text: fmt(value) }),
        el("td", { class: "base", text: baseName }), el("td", { class: "v base", text: fmt(baseValue) })]));
    }
    top.append(table);
    if (h.without_parts) top.append(el("p", { class: "hint", id: "without-parts", text: "Left out (the layer's attention rows and entropy, the head / MLP alignment): " + h.without_parts + "." }));
  }

  // --- profile chart -------------------------------------------------------------------------------
  function profile() {
    if (!D.profile) return;
    const box = document.getElementById("profile");
    box.hidden = false;
    const rows = D.profile, W = 640, H = 220, m = { l: 40, r: 120, t: 10, b: 30 };
    const series = [["cosine", "#1565c0", ""], ["skip_cosine", "#888", "4 3"], ["delta_r2", "#2e7d32", ""], ["recovery", "#ef6c00", ""]];
    const values = rows.flatMap((r) => series.map(([k]) => r[k]).filter((v) => v !== null));
    const lo = Math.min(0, ...values), hi = Math.max(1, ...values);
    const xs = rows.map((r) => r.source), x0 = Math.min(...xs), x1 = Math.max(...xs);
    const X = (v) => m.l + (x1 === x0 ? 0.5 : (v - x0) / (x1 - x0)) * (W - m.l - m.r);
    const Y = (v) => m.t + (1 - (v - lo) / (hi - lo)) * (H - m.t - m.b);
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("width", W); svg.setAttribute("height", H); svg.id = "profile-chart";
    const add = (tag, attrs, text) => { const n = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text !== undefined) n.textContent = text; svg.append(n); return n; };
    for (const v of [lo, 0, 0.5, 1, hi]) {
      if (v < lo || v > hi) continue;
      add("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v), stroke: "#eee" });
      add("text", { x: m.l - 4, y: Y(v) + 4, "text-anchor": "end", "font-size": 10 }, fmt(v, 2));
    }
    series.forEach(([key, color, dash], i) => {
      const pts = rows.filter((r) => r[key] !== null).map((r) => X(r.source) + "," + Y(r[key])).join(" ");
      add("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 1.5, "stroke-dasharray": dash });
      add("text", { x: W - m.r + 8, y: m.t + 14 * i + 10, fill: color, "font-size": 11 }, key);
    });
    rows.forEach((r, i) => {
      for (const [key, color] of series) {
        if (r[key] === null) continue;
        const c = add("circle", { cx: X(r.source), cy: Y(r[key]), r: 4, fill: color, "data-layer": i, cursor: "pointer" });
        add("title", {}, r.name + " " + key + " " + fmt(r[key]));
        c.addEventListener("click", () => showLayer(i));
      }
      add("text", { x: X(r.source), y: H - m.b + 14, "text-anchor": "middle", "font-size": 10 }, String(r.source));
    });
    add("text", { x: (W - m.r + m.l) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11 }, "source index (-1 = embeddings); click a point for its tokens");
    box.append(el("div", { class: "meta", text: "Cosine (skip cosine dashed), update R² and recovery against depth. Per-layer token budget: " +
      D.layers[0].sequences.length + " window(s) in full and the " + D.layers[0].worst.length + " worst positions per pair; attention rows are head means." }));
    box.append(svg);
    const links = el("div", { class: "layers" }, [el("span", { text: "pairs: " })]);
    D.layers.forEach((L, i) => links.append(el("a", { href: "#", "data-layer": i, text: L.name, onclick: (ev) => { ev.preventDefault(); showLayer(i); } })));
    box.append(links);
  }

  // --- controls --------------------------------------------------------------------------------------
  function controls() {
    const c = document.getElementById("controls");
    c.replaceChildren();
    const L = layer();
    const cats = el("div", { class: "row" }, [el("span", { text: "show only: " })]);
    D.categories.forEach((name) => {
      const box = el("input", { type: "checkbox", id: "cat-" + name, "data-category": name });
      box.checked = S.cats.has(name);
      box.addEventListener("change", () => { if (box.checked) S.cats.add(name); else S.cats.delete(name); applyFilter(); });
      cats.append(el("label", {}, [box, " " + name.replace("_", " ")]));
    });
    const scale = el("select", { id: "scale" });
    for (const v of [0.25, 0.5, 1, 2]) { const o = el("option", { value: v, text: String(v) }); if (v === S.scaleMax) o.selected = true; scale.append(o); }
    scale.addEventListener("change", () => { S.scaleMax = Number(scale.value); render(); });
    const sortButton = el("button", { id: "sort", text: S.view === "worst" ? "back to the text" : "sort by error: the " + L.worst.length + " worst positions" });
    sortButton.addEventListener("click", () => { S.view = S.view === "worst" ? "text" : "worst"; render(); });
    const fl = L.flagged;
    c.append(el("div", { class: "row" }, [
      el("strong", { text: "pair " + L.name + " " }), sortButton, " ",
      el("span", { class: "legend" }, [" prediction error ‖target − prediction‖ / ‖layer update‖: 0 ", el("span", { class: "bar" }), " ≥ ", scale]),
    ]));
    c.append(el("div", { class: "row meta", text: "1 = no better than copying the source; median over the whole set " + fmt(L.median_error, 3) +
      ". Not shaded: position 0 (hatched, " + fl.position0 + " tokens) and near-zero updates (dotted, " + fl.near_zero + " tokens)." }));
    c.append(cats);
  }

  function passes(bits) {
    if (!S.cats.size) return true;
    return D.categories.some((name, i) => S.cats.has(name) && (bits & (1 << i)));
  }

  function applyFilter() {
    const L = layer();
    document.querySelectorAll("#text .tok").forEach((span) => span.classList.toggle("filtered", !passes(L.positions[span.dataset.key].c)));
    document.querySelectorAll("#worst tr[data-key]").forEach((row) => row.classList.toggle("filtered", !passes(L.positions[row.dataset.key].c)));
  }

  // --- token views -------------------------------------------------------------------------------------
  function tokenSpan(L, b, t, id) {
    const key = b + ":" + t, P = L.positions[key];
    const span = el("span", { class: "tok", "data-b": b, "data-t": t, "data-key": key, text: word(id) });
    if (!P) return span;
    if (P.f === 1) span.classList.add("flag-position0");
    else if (P.f === 2) span.classList.add("flag-near-zero");
    else {
      span.style.backgroundColor = shade(P.e);
      span.dataset.err = P.e;
      if (P.e >= S.scaleMax) span.classList.add("saturated");
    }
    span.title = (P.f === 1 ? "position 0: not shaded" : P.f === 2 ? "near-zero update: not shaded" : "error " + fmt(P.e, 3)) +
      " · KL sub " + fmt(P.ks, 3) + " · KL skip " + fmt(P.kk, 3) + (P.c ? " · " + catNames(P.c).join(", ") : "");
    span.addEventListener("click", () => select(key));
    return span;
  }

  function renderText() {
    const L = layer(), box = document.getElementById("text");
    box.replaceChildren();
    for (const seq of L.sequences) {
      const div = el("div", { class: "seq", "data-b": seq.b }, [el("span", { class: "label", text: "held-out window " + seq.b })]);
      seq.ids.forEach((id, t) => div.append(tokenSpan(L, seq.b, t, id)));
      box.append(div);
    }
  }

  function renderWorst() {
    const L = layer(), box = document.getElementById("worst");
    const table = el("table", {}, [el("tr", {}, ["#", "error", "KL sub / skip", "context (the position in red outline)", "categories"].map((h) => el("th", { text: h })))]);
    L.worst.forEach((w, rank) => {
      const key = w.b + ":" + w.t, P = L.positions[key];
      const ctx = el("td", { class: "ctx" });
      for (let t = w.start; t < w.ids.length; t++) {
        const span = tokenSpan(L, w.b, t, w.ids[t]);
        if (t === w.t) span.classList.add("focus");
        ctx.append(span);
      }
      const row = el("tr", { "data-key": key }, [el("td", { text: rank + 1 }), el("td", { text: fmt(P.e, 3) }),
        el("td", { text: fmt(P.ks, 3) + " / " + fmt(P.kk, 3) }), ctx, el("td", { text: catNames(P.c).join(", ") })]);
      row.addEventListener("click", () => select(key));
      table.append(row);
    });
    box.replaceChildren(el("div", { class: "meta", text: "The worst positions of all " + D.header.eval_tokens + " held-out tokens (window:position), by normalised error." }), table);
  }

  // --- details ------------------------------------------------------------------------------------------
  function attentionBlock(title, rows, ids, t, prefix) {
    const wrap = el("div", { id: prefix });
    wrap.append(el("h3", { text: title }));
    const sel = el("select", { id: prefix + "-head" });
    rows.forEach((_, h) => sel.append(el("option", { value: h, text: rows.length === 1 && layer().mean_heads ? "head mean" : "head " + h })));
    const line = el("div", { class: "attn" });
    const draw = () => {
      const row = rows[Number(sel.value)], peak = Math.max(...row);
      const parts = [];
      row.forEach((a, k) => {
        const span = el("span", { text: ids[k] !== undefined ? word(ids[k]) : "·", title: "key " + k + ": " + fmt(a, 3) });
        span.style.backgroundColor = "rgba(21, 101, 192, " + (peak > 0 ? a / peak : 0).toFixed(3) + ")";
        parts.push(span);
      });
      const order = row.map((a, k) => [a, k]).sort((p, q) => q[0] - p[0]).slice(0, 3);
      line.replaceChildren(...parts);
      top3.textContent = "top keys: " + order.map(([a, k]) => k + " " + JSON.stringify(ids[k] !== undefined ? word(ids[k]) : "?") + " " + fmt(a, 3)).join(", ");
    };
    const top3 = el("div", { class: "meta" });
    sel.addEventListener("change", draw);
    wrap.append(sel, top3, line);
    draw();
    return wrap;
  }

  function select(key) {
    const L = layer(), P = L.positions[key];
    if (!P) return;
    S.selected = key;
    document.querySelectorAll(".tok.selected").forEach((n) => n.classList.remove("selected"));
    document.querySelectorAll('.tok[data-key="' + key + '"]').forEach((n) => n.classList.add("selected"));
    const box = document.getElementById("details");
    box.replaceChildren();
    box.dataset.key = key;
    box.append(el("h2", {}, ["window " + P.b + ", position " + P.t + ": ", el("span", { class: "strtok", text: visible(word(P.tok)) }),
      " → next ", el("span", { class: "strtok", text: visible(word(P.next)) })]));
    const err = P.f === 1 ? "not defined at position 0" : P.f === 2 ? "not defined: near-zero update" : fmt(P.e, 4);
    box.append(el("table", { id: "facts" }, [
      ["normalised error", err], ["‖target − prediction‖ / ‖update‖", fmt(P.err, 4) + " / " + fmt(P.upd, 4)],
      ["KL substituted (nats)", fmt(P.ks, 4)], ["KL skipped (nats)", fmt(P.kk, 4)],
      ["attention entropy (head mean, nats)", fmt(P.h, 4)],
    ].map(([k, v]) => el("tr", {}, [el("td", { text: k }), el("td", { class: "v", "data-fact": k, text: v })]))));
    box.append(el("div", {}, [el("span", { text: "categories: " }), ...(P.c ? catNames(P.c).map((n) => el("span", { class: "cat", text: n })) : [el("span", { text: "none" })])]));
    box.append(el("h3", { text: "next-token top 5" }));
    const top = el("table", { id: "top5" }, [el("tr", {}, [el("th", { text: "" }), ...D.modes.map((m) => el("th", { text: m }))])]);
    for (let r = 0; r < P.top[0].length; r++) {
      top.append(el("tr", {}, [el("td", { text: String(r + 1) }), ...D.modes.map((m, i) => el("td", { "data-mode": m, "data-rank": r }, [
        el("span", { class: "strtok", "data-id": P.top[i][r], text: visible(word(P.top[i][r])) }), " ", el("span", { class: "prob", "data-p": P.p[i][r], text: P.p[i][r].toFixed(3) })]))]));
    }
    box.append(top);
    if (P.ah) {
      box.append(el("h3", { text: "which part of block " + L.target + " the error lies along: cos(target − prediction, part)" }));
      const parts = P.ah.map((v, h) => ["head " + h, v]).concat([["MLP", P.am]]);
      const best = parts.reduce((a, b) => (Math.abs(b[1]) > Math.abs(a[1]) ? b : a));
      box.append(el("table", { id: "alignment" }, parts.map(([n, v]) => el("tr", { class: n === best[0] ? "best" : "" }, [el("td", { text: n }), el("td", { text: fmt(v, 3) })]))));
    } else if (D.header.without_parts) {
      box.append(el("p", { class: "hint", text: "No head / MLP alignment, layer attention or entropy: " + D.header.without_parts + "." }));
    } else {
      box.append(el("p", { class: "hint", text: "No head / MLP alignment: the pair spans " + (L.target - L.source) + " blocks (the decomposition needs one)." }));
    }
    const A = L.attention[key];
    if (A) {
      // the window's tokens: shown in full, or the longest context of its worst positions (it reaches past t)
      const seq = L.sequences.find((s) => s.b === P.b) ||
        L.worst.filter((w) => w.b === P.b).reduce((a, w) => (w.ids.length > a.ids.length ? w : a));
      if (A.layer) box.append(attentionBlock("attention of block " + (L.source + 1) + " (the layer) at this position", A.layer, seq.ids, P.t, "attn-layer"));
      box.append(attentionBlock("attention of the forward model at this position", A.forward, seq.ids, P.t, "attn-forward"));
    }
  }

  function render() {
    controls();
    const text = document.getElementById("text"), worst = document.getElementById("worst");
    if (S.view === "worst") { renderWorst(); text.hidden = true; worst.hidden = false; }
    else { renderText(); text.hidden = false; worst.hidden = true; }
    applyFilter();
    if (S.selected && layer().positions[S.selected]) select(S.selected);
  }

  function showLayer(i) {
    S.layer = i; S.selected = null;
    document.querySelectorAll("#profile .layers a").forEach((a) => a.classList.toggle("current", Number(a.dataset.layer) === i));
    document.getElementById("details").replaceChildren(el("p", { class: "hint", text: "Click a token for its details." }));
    render();
  }

  header();
  profile();
  showLayer(0);
  document.body.dataset.ready = "1";
})();
