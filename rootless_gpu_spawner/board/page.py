"""The board's HTML: the hub's stylesheet and navbar look, filled in by script from api/board.

The page carries the hub's xsrf token for its own API calls (JupyterHub checks it on every
cookie-authenticated request that is not a navigation).  Names only ever reach the DOM through ``textContent`` (never as HTML), and only the names the
API gave this viewer: a student's page holds no other student's name.
"""

from __future__ import annotations

from html import escape

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>GPU board</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="@@HUB@@static/css/style.min.css">
<style>
 .rgs-gpu {border:1px solid #ddd; border-radius:6px; padding:12px; margin-bottom:12px;}
 .rgs-plot {width:100%; height:90px; background:#fafafa; border:1px solid #eee;}
 .rgs-mine {border-color:#f37524; border-width:2px;}
</style></head>
<body>
<nav class="navbar navbar-expand-sm bg-body-tertiary mb-4">
 <div class="container-fluid">
  <a class="navbar-brand" href="@@HUB@@home"><img src="@@HUB@@logo" alt="JupyterHub logo" height="28"></a>
  <ul class="navbar-nav me-auto"><li class="nav-item"><a class="nav-link" href="@@HUB@@home">Home</a></li>
   <li class="nav-item"><a class="nav-link active" href="">GPU board</a></li></ul>
  <span class="navbar-text" id="rgs-viewer">@@NAME@@ (@@ROLE@@)</span>
 </div>
</nav>
<div class="container">
 <h1>GPUs</h1>
 <div id="rgs-simulated" class="alert alert-warning" hidden>
  Figures on this page are <strong>simulated</strong> (source: <span id="rgs-source">@@SOURCE@@</span>):
  there is no GPU driver behind them.</div>
 <div id="rgs-error" class="alert alert-danger" hidden></div>
 <p id="rgs-policy" class="text-muted"></p>
 <div id="rgs-gpus" class="row"></div>
 <h2>Servers holding GPUs</h2>
 <table class="table table-sm" id="rgs-servers"><thead><tr>
  <th>Server</th><th>GPUs</th><th>Idle</th><th>Why</th><th>Lease ends</th></tr></thead><tbody></tbody></table>
 <p class="text-muted">Updated <span id="rgs-updated">never</span>; refreshes every @@REFRESH_S@@ s.</p>
</div>
<script>
"use strict";
const API = "@@API@@", REFRESH = @@REFRESH@@, XSRF = "@@XSRF@@";
function el(tag, text, cls) { const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text); if (cls) e.className = cls; return e; }
function gib(b) { return b === null || b === undefined ? "?" : (b / 2 ** 30).toFixed(1); }
function dur(s) { s = Math.max(0, Math.round(s)); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return h ? h + " h" + (m ? " " + m + " min" : "") : m ? m + " min" : s + " s"; }
function plot(history, span) {
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 360 100"); svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "rgs-plot");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", history.map(p => ((span + p[0]) / span * 360).toFixed(1) + "," + (100 - p[1]).toFixed(1)).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#f37524"); line.setAttribute("stroke-width", "2");
  line.setAttribute("vector-effect", "non-scaling-stroke");
  svg.appendChild(line); return svg; }
function holderText(g) {
  if (g.state === "free") return "free";
  if (g.mine) return "yours (server " + (g.server || "default") + ")";
  if (g.holder) return g.holder + (g.server ? " / " + g.server : "");
  return "in use"; }
function card(g, span) {
  const col = el("div", null, "col-md-6"), box = el("div", null, "rgs-gpu" + (g.mine ? " rgs-mine" : ""));
  box.dataset.gpu = g.id;
  box.appendChild(el("h3", "GPU " + g.id + (g.name ? " \u2014 " + g.name : "") + (g.node ? " @ " + g.node : ""), "h5"));
  const util = g.utilisation === null ? "?" : g.utilisation.toFixed(0) + " %";
  box.appendChild(el("div", "Utilisation " + util + " \u00b7 memory " + gib(g.memory_used) + " / " + gib(g.memory_total) + " GiB"));
  box.appendChild(el("div", "Holder: " + holderText(g), "rgs-holder"));
  box.appendChild(plot(g.history, span));
  box.appendChild(el("small", "utilisation, last " + dur(span), "text-muted"));
  col.appendChild(box); return col; }
function row(s) {
  const tr = el("tr"), now = Date.now() / 1000;
  tr.appendChild(el("td", s.user + (s.server ? " / " + s.server : "")));
  tr.appendChild(el("td", s.gpus.join(",")));
  tr.appendChild(el("td", s.idle ? "yes" : "no"));
  tr.appendChild(el("td", s.reason));
  const ends = s.lease_ends ? Date.parse(s.lease_ends) / 1000 : null;
  tr.appendChild(el("td", ends === null ? "no lease" : s.lease_ends + " (in " + dur(ends - now) + ")", "rgs-lease"));
  return tr; }
function render(m) {
  document.getElementById("rgs-simulated").hidden = !m.simulated;
  document.getElementById("rgs-source").textContent = m.source;
  const err = document.getElementById("rgs-error");
  err.hidden = !m.source_error; err.textContent = m.source_error ? "Utilisation source: " + m.source_error : "";
  const p = m.policy;
  document.getElementById("rgs-policy").textContent = "A server whose GPUs all stay under " + p.threshold +
    " % for " + dur(p.window) + " is stopped and its GPUs go to the next student" +
    (p.lease ? "; GPUs are lent for at most " + dur(p.lease) + " per server start." : ".");
  const span = 3600, gpus = document.getElementById("rgs-gpus");
  gpus.replaceChildren(...m.gpus.map(g => card(g, span)));
  const body = document.querySelector("#rgs-servers tbody");
  body.replaceChildren(...(m.servers.length ? m.servers.map(row) : [el("tr")]));
  document.getElementById("rgs-updated").textContent = m.now; }
async function refresh() {
  try { const r = await fetch(API, {credentials: "same-origin", cache: "no-store", headers: {"X-XSRFToken": XSRF}});
    if (r.ok) render(await r.json());
    else { const e = document.getElementById("rgs-error"); e.hidden = false; e.textContent = "The board's API answered " + r.status; }
  } catch (e) { /* next round */ }
  setTimeout(refresh, REFRESH); }
refresh();
</script>
</body></html>
"""


def render_page(*, hub: str, api: str, name: str, role: str, refresh_ms: int, source: str, xsrf: str = "") -> str:
    values = {
        "@@HUB@@": escape(hub), "@@API@@": escape(api), "@@NAME@@": escape(name),
        "@@ROLE@@": escape(role), "@@REFRESH@@": str(int(refresh_ms)),
        "@@REFRESH_S@@": f"{refresh_ms / 1000:g}", "@@SOURCE@@": escape(source), "@@XSRF@@": escape(xsrf),
    }
    page = PAGE
    for key, value in values.items():
        page = page.replace(key, value)
    return page
