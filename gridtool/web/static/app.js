// gridtool web view: fetch JSON, render with textContent only (every value is text,
// never markup), and refetch when the server's event stream says the registry changed.
"use strict";

const $ = (sel) => document.querySelector(sel);
const filters = ["host", "state", "pool", "kind", "q"];
let page = 1;
let busy = false;
let again = false;
let clockSkew = 0; // server time minus this browser's, seconds

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells, cls) {
  const tr = el("tr", null, cls);
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell ?? "-";
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function ago(epoch) {
  if (!epoch) return "-";
  const s = Math.max(0, Date.now() / 1000 + clockSkew - epoch);
  if (s < 90) return `${Math.round(s)}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  return `${Math.round(s / 3600)}h ago`;
}

function mib(n) {
  return n >= 1024 ? `${(n / 1024).toFixed(1)} GiB` : `${n} MiB`;
}

function stateCell(state, reported) {
  const span = el("span", state, `state state-${state}`);
  if (reported && reported !== state) span.title = `last reported: ${reported}`;
  return span;
}

function memoryBar(h) {
  if (h.memory_mib === undefined) return "-";
  const wrap = el("span");
  const meter = el("meter");
  meter.min = 0; meter.max = 100; meter.high = 90; meter.value = h.memory_used_pct;
  wrap.append(meter, ` ${h.memory_used_pct}% of ${mib(h.memory_mib)}`);
  return wrap;
}

function protection(h) {
  if (h.state === "lost") return "-";
  const parts = [];
  if (h.watchdog) parts.push(`watchdog ${h.watchdog_timeout}s`);
  for (const f of h.fencing || []) parts.push(`${f} fence`);
  return parts.length ? parts.join(", ") : "none";
}

function renderHosts(hosts) {
  $("#host-count").textContent = `(${hosts.length})`;
  fill($("#host-table tbody"), hosts.map((h) => {
    const tr = row([h.name, stateCell(h.state), memoryBar(h), h.running_guests, h.guests,
      protection(h), h.agent_version, h.state === "lost" ? "-" : ago(h.reported_at)],
    h.state === "lost" ? "lost" : "");
    tr.dataset.host = h.name;
    tr.dataset.state = h.state;
    return tr;
  }));
}

function list(items, fn) {
  const ul = el("ul", null, "small");
  for (const item of items) ul.appendChild(el("li", fn(item)));
  return ul;
}

function renderGuests(doc) {
  $("#guest-count").textContent = `(${doc.total} match)`;
  fill($("#guest-table tbody"), doc.guests.map((g) => {
    const tr = row([g.name, g.host, stateCell(g.state, g.reported_state), g.kind, g.pool,
      g.vcpus, mib(g.memory_mib),
      list(g.disks, (d) => `${d.target}: ${d.source}${d.shared ? ` (shared ${d.volume})` : ""}`),
      list(g.fences, (f) => `${f.volume} held by ${f.holder}, token ${f.token}`),
      g.waiting]);
    tr.dataset.guest = g.name;
    tr.dataset.host = g.host;
    tr.dataset.state = g.state;
    return tr;
  }));
  page = doc.page;
  $("#page").textContent = `page ${doc.page} of ${doc.pages}`;
  $("#prev").disabled = doc.page <= 1;
  $("#next").disabled = doc.page >= doc.pages;
}

function renderFences(fences, count) {
  $("#fence-count").textContent = count > fences.length ? `(first ${fences.length} of ${count})` : `(${count})`;
  fill($("#fence-table tbody"), fences.map((f) => {
    const tr = row([f.volume, f.guest_name || f.guest, f.holder, f.token, f.kind, ago(f.since)]);
    tr.dataset.volume = f.volume;
    return tr;
  }));
}

function decision(p) {
  const entries = Object.entries(p.decision || {});
  if (!entries.length) return p.message || "-";
  return entries.map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(" ");
}

function renderPools(pools) {
  $("#pool-count").textContent = `(${pools.length})`;
  fill($("#pool-table tbody"), pools.map((p) => row([p.name, p.template, p.policy,
    `${p.target} (min ${p.min}, max ${p.max})`, p.members, p.ready, decision(p)])));
}

function renderManager(m) {
  $("#leader").textContent = m.leader || "no manager leads";
  $("#leader-since").textContent = m.since ? `since ${ago(m.since)}` : "";
  const st = m.status || {actions: [], blocked: {}, fences: {}};
  $("#actions").replaceChildren(...st.actions.slice(-20).reverse().map((a) => el("li", a)));
  $("#waiting").replaceChildren(...Object.entries(st.blocked).map(([g, why]) => el("li", `${g}: ${why}`)));
  $("#lost").replaceChildren(...Object.entries(st.fences).map(([h, how]) => el("li", `${h}: ${how}`)));
}

function renderCheck(check) {
  const findings = check.findings || [];
  $("#check").hidden = findings.length === 0;
  const more = check.finding_count > findings.length ? ` (first ${findings.length} of ${check.finding_count} findings)` : "";
  $("#check-status").textContent = (check.summary || check.status) + more;
  $("#findings").replaceChildren(...findings.map((f) =>
    el("li", `${f.severity} ${f.code} ${f.kind} ${f.subject}: ${f.message}`, `sev-${f.severity}`)));
}

function renderRegistry(reg) {
  const banner = $("#banner");
  banner.hidden = reg.up;
  if (!reg.up) {
    banner.textContent = `Registry unreachable${reg.since ? ` since ${ago(reg.since)}` : ""}: ` +
      `${reg.error}. Showing the last known state; reconnecting by itself.`;
  }
  document.body.dataset.registry = reg.up ? "up" : "down";
}

function setOptions(select, values) {
  const current = select.value;
  const want = ["", ...values];
  const have = [...select.options].map((o) => o.value);
  if (want.join("\n") !== have.join("\n")) {
    select.replaceChildren(...want.map((v) => { const o = el("option", v || "any"); o.value = v; return o; }));
  }
  select.value = want.includes(current) ? current : "";
}

function query() {
  const form = $("#guest-filters");
  const params = new URLSearchParams();
  for (const name of filters) {
    const value = form.elements[name].value;
    if (value) params.set(name, value);
  }
  if (page > 1) params.set("page", page);
  return params;
}

async function getJSON(url) {
  const response = await fetch(url, {cache: "no-store"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  try {
    do {
      again = false;
      const fleet = await getJSON("/api/fleet");
      clockSkew = fleet.now - Date.now() / 1000;
      const form = $("#guest-filters");
      for (const name of ["host", "state", "pool", "kind"]) setOptions(form.elements[name], fleet.filters[name]);
      const params = query();
      history.replaceState(null, "", params.toString() ? `?${params}` : location.pathname);
      const guests = await getJSON(`/api/guests?${params}`);
      renderRegistry(fleet.registry);
      renderCheck(fleet.check);
      renderHosts(fleet.hosts);
      renderGuests(guests);
      renderFences(fleet.fences, fleet.fence_count);
      renderPools(fleet.pools);
      renderManager(fleet.manager);
      $("#revision").textContent = `registry revision ${fleet.revision}`;
      document.body.dataset.revision = fleet.revision;
    } while (again);
  } catch (err) {
    renderRegistry({up: false, error: `the web server did not answer (${err.message})`, since: 0});
  } finally {
    busy = false;
  }
}

function connect() {
  const live = $("#live");
  const source = new EventSource("/events");
  source.addEventListener("open", () => {
    live.textContent = "live"; live.className = "live on";
    refresh();
  });
  // the event only says "look again": what the page shows comes from the fetch that
  // follows (an older fetch still under way is followed by one more)
  source.addEventListener("change", () => refresh());
  // EventSource reconnects by itself (the server asks for 1 s); say so meanwhile.
  source.addEventListener("error", () => { live.textContent = "reconnecting"; live.className = "live off"; });
}

function init() {
  const form = $("#guest-filters");
  const params = new URLSearchParams(location.search);
  for (const name of filters) {
    const value = params.get(name);
    if (value) {
      const field = form.elements[name];
      if (field.tagName === "SELECT") field.appendChild(Object.assign(el("option", value), {value}));
      field.value = value;
    }
  }
  page = Number(params.get("page")) || 1;
  form.addEventListener("input", () => { page = 1; refresh(); });
  form.addEventListener("submit", (ev) => ev.preventDefault());
  $("#prev").addEventListener("click", () => { page -= 1; refresh(); });
  $("#next").addEventListener("click", () => { page += 1; refresh(); });
  refresh();
  connect();
}

document.addEventListener("DOMContentLoaded", init);
