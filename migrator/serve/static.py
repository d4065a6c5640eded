"""The dashboard's stylesheet and script, served from /static/.

Kept in Python so the package needs no data files. The script puts text into the page with textContent
only, never as HTML."""

from __future__ import annotations

CSS = """
:root { --fg:#1d2330; --muted:#6b7385; --bg:#f4f6fa; --card:#fff; --ok:#1f8a4c; --bad:#c0392b; --acc:#2d6cdf; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; flex-wrap:wrap; justify-content:space-between; align-items:center; padding:.6rem 1rem;
         background:#1d2330; color:#fff; }
header h1 { font-size:1.15rem; margin:0; } .who { font-size:.85rem; opacity:.85; } .who a { color:#fff; }
main { max-width:1100px; margin:0 auto; padding:.75rem; display:grid; gap:.75rem;
       grid-template-columns:repeat(auto-fit, minmax(320px, 1fr)); }
main.login { display:block; max-width:380px; padding-top:12vh; }
.card { background:var(--card); border-radius:10px; padding:.8rem 1rem; box-shadow:0 1px 3px rgba(0,0,0,.08); min-width:0; }
.card h2 { font-size:1rem; margin:.1rem 0 .6rem; }
label { display:block; margin:.4rem 0; } input { width:100%; padding:.55rem; font-size:1rem; border:1px solid #ccd;
        border-radius:6px; margin-top:.2rem; }
button { font-size:.95rem; padding:.55rem .9rem; border-radius:6px; border:0; background:var(--acc); color:#fff;
         cursor:pointer; margin:.2rem .2rem .2rem 0; min-height:44px; }
button.danger { background:var(--bad); } button[disabled] { background:#b8bfcc; cursor:not-allowed; }
button.link { background:none; color:inherit; text-decoration:underline; min-height:0; padding:.2rem; }
.muted { color:var(--muted); } .error { color:var(--bad); } .ok { color:var(--ok); }
.state-Running { color:var(--ok); } .state-Failure { color:var(--bad); }
table { border-collapse:collapse; width:100%; font-size:.85rem; } th, td { text-align:left; padding:.3rem .4rem;
        border-bottom:1px solid #eef0f4; vertical-align:top; word-break:break-word; }
tr.failed td { color:var(--bad); } .scroll { overflow-x:auto; }
.confirm { border:1px solid var(--bad); border-radius:8px; padding:.6rem; margin-top:.5rem; }
.op { margin:.4rem 0; } .bar { height:10px; background:#e4e8f0; border-radius:5px; overflow:hidden; }
.bar > div { height:100%; width:0; background:var(--acc); transition:width .3s; }
.op.done .bar > div { width:100% !important; background:var(--ok); } .op.failed .bar > div { background:var(--bad); }
.chart { margin:.3rem 0 .8rem; } .chart svg { width:100%; height:60px; background:#f7f9fc; }
.chart rect { fill:var(--acc); } figcaption { font-size:.85rem; }
.charts { grid-column:1 / -1; }
"""

JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
function size(n) { if (n == null) return "-"; const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(1) : n) + " " + u[i]; }
async function api(path, opts) {
  opts = opts || {}; opts.headers = Object.assign({"X-CSRF-Token": csrf}, opts.headers || {});
  opts.credentials = "same-origin";
  const r = await fetch("/api/v1" + path, opts); let body = {};
  try { body = await r.json(); } catch (e) { body = {message: r.statusText}; }
  return {status: r.status, body: body};
}
function table(headers, rows) {
  const t = el("table"), h = t.createTHead().insertRow();
  headers.forEach((x) => h.appendChild(el("th", x)));
  const b = t.createTBody();
  rows.forEach((r) => { const tr = b.insertRow(); r.forEach((x) => tr.appendChild(el("td", x))); });
  return t;
}
async function loadContainers() {
  const box = $("containers"); if (!box) return;
  const r = await api("/containers");
  box.textContent = ""; box.className = "scroll";
  if (r.status !== 200) { box.appendChild(el("p", r.body.message || "unavailable", "error")); return; }
  box.appendChild(table(["container", "state", "expected"], (r.body.containers || []).map(
    (c) => [c.name, c.state || c.status || "", c.expected || ""])));
}
async function loadSnapshots() {
  const box = $("snapshots"); if (!box) return;
  const r = await api("/snapshots");
  box.textContent = ""; box.className = "scroll";
  if (r.status !== 200) { box.appendChild(el("p", r.body.message || "unavailable", "error")); return; }
  const rows = (r.body.snapshots || []).slice().reverse().map((s) => [s.id,
    new Date(s.time * 1000).toISOString().replace("T", " ").slice(0, 16), s.kind || "", size(s.added),
    (s.tags || []).join(" ")]);
  const t = table(["id", "time (UTC)", "kind", "added", "tags"], rows); t.id = "snapshot-table";
  box.appendChild(t);
}
async function loadStack() {
  const r = await api("/stack"); if (r.status !== 200) return;
  const s = $("stack-state"); s.textContent = r.body.state || "absent"; s.className = "state-" + r.body.state;
  $("lock-line").textContent = r.body.lock ? "busy: " + r.body.lock : "";
  document.querySelectorAll("button.action").forEach((b) => {
    b.disabled = b.dataset.readonly === "1" || !(r.body.allowed_actions || []).includes(b.dataset.verb); });
}
const ops = {};
function opCard(ev) {
  let o = ops[ev.op]; if (o) return o;
  const box = el("div", undefined, "op"); box.id = "op-" + ev.op;
  const title = el("div", ev.verb + (ev.user ? " by " + ev.user : ""));
  const bar = el("div", undefined, "bar"), fill = el("div"); bar.appendChild(fill);
  const line = el("div", "started", "muted");
  box.append(title, bar, line); const none = $("no-ops"); if (none) none.hidden = true;
  $("ops").prepend(box); o = ops[ev.op] = {box, fill, line, steps: 0}; return o;
}
function onEvent(ev) {
  if (ev.kind === "state") { loadStack(); return; }
  const o = opCard(ev);
  if (ev.kind === "step") { o.steps++; o.line.textContent = ev.message;
    o.fill.style.width = Math.min(90, 10 + o.steps * 8) + "%"; }
  if (ev.kind === "progress") o.line.textContent = size(ev.bytes_done) + " in " + ev.elapsed.toFixed(1) + " s";
  if (ev.kind === "finished") {
    o.box.classList.add(ev.outcome === "ok" ? "done" : "failed");
    o.line.textContent = ev.outcome + " in " + ev.duration + " s" + (ev.snapshot_id ? " (snapshot " + ev.snapshot_id + ")" : "")
      + (ev.message && ev.outcome !== "ok" ? ": " + ev.message : "");
    loadStack(); loadSnapshots(); loadContainers();
  }
}
let pending = null;
async function act(verb, extra) {
  const msg = $("action-message"); msg.className = ""; msg.textContent = verb + ": starting...";
  const r = await api("/actions/" + verb, {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify(extra || {})});
  if (r.status === 202 || r.status === 200) { msg.className = "ok"; msg.textContent = verb + " started (" + r.body.op + ")"; }
  else { msg.className = "error"; msg.textContent = verb + " refused (" + r.status + "): " + (r.body.message || ""); }
}
function setup() {
  const form = $("login-form");
  if (form) {
    form.addEventListener("submit", async (e) => { e.preventDefault();
      const r = await api("/login", {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({user: $("login-user").value, password: $("login-password").value})});
      if (r.status === 200) location.href = "/"; else $("login-error").textContent = r.body.message || "login failed"; });
    return;
  }
  document.querySelectorAll("button.action").forEach((b) => { if (b.disabled && !b.dataset.verb) return;
    b.addEventListener("click", () => {
      const verb = b.dataset.verb;
      if (verb === "restore" || verb === "cleanup") {
        pending = verb; $("confirm-box").hidden = false; $("confirm-input").value = "";
        $("confirm-snapshot").hidden = verb !== "restore";
        $("confirm-text").textContent = verb + " is destructive: type the VSN name (" + $("vsn-name").textContent + ") to confirm.";
        return;
      }
      act(verb);
    }); });
  $("confirm-go").addEventListener("click", () => {
    const extra = {confirm: $("confirm-input").value};
    if (pending === "restore" && $("confirm-snapshot").value) extra.snapshot = $("confirm-snapshot").value;
    $("confirm-box").hidden = true; act(pending, extra); });
  $("confirm-cancel").addEventListener("click", () => { $("confirm-box").hidden = true; });
  const out = $("logout");
  if (out) out.addEventListener("click", async () => { await api("/logout", {method: "POST"}); location.href = "/login"; });
  loadContainers(); loadSnapshots();
  const es = new EventSource("/api/v1/events");
  ["started", "step", "progress", "state", "finished"].forEach((k) =>
    es.addEventListener(k, (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { /* ignore a bad frame */ } }));
}
document.addEventListener("DOMContentLoaded", setup);
"""

ASSETS = {"app.css": ("text/css; charset=utf-8", CSS), "app.js": ("application/javascript; charset=utf-8", JS)}
