// Tally's console: polls every node's /api/status once a second (the node serving the page
// lists them in /api/cluster), merges what they report, and draws it. No build step, no
// framework; uPlot draws the charts. With a token (from `tally cluster up`, in the URL once),
// the control panel shows and its buttons call /api/control on the page's own origin.
"use strict";

const POLL_MS = 1000;
const WINDOW_S = 300;
const SUSPECT_AFTER = 1; // failed polls in a row
const DOWN_AFTER = 3;
// Latency bucket bounds, seconds: 10 µs doubling, as engine::stats::LATENCY_BOUNDS_SECONDS.
const BOUNDS = Array.from({ length: 21 }, (_, k) => 0.00001 * 2 ** k);

const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("tally-token", params.get("token"));
  params.delete("token");
  history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
}
const token = sessionStorage.getItem("tally-token");

const state = {
  cluster: null,
  control: null,
  nodes: new Map(), // id -> {status, fails, state, since, series: Map(t -> second)}
  leaders: new Map(), // shard -> node id
  events: [], // {t, text}
  audit: null,
};

const $ = (selector) => document.querySelector(selector);
const fmt = (value, digits = 0) =>
  value === undefined || value === null || Number.isNaN(value)
    ? "-"
    : Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const bytes = (value) =>
  value === undefined || value === null ? "-" : value >= 1 << 30 ? fmt(value / (1 << 30), 1) + " GiB" : fmt(value / (1 << 20), 0) + " MiB";
const seconds = (value) => (value >= 3600 ? fmt(value / 3600, 1) + " h" : value >= 60 ? fmt(value / 60, 1) + " min" : fmt(value, 0) + " s");

async function getJson(url, options = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), options.timeout || 900);
  try {
    const response = await fetch(url, { ...options, signal: controller.signal, cache: "no-store" });
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new Error((body && body.error) || response.statusText);
    return body;
  } finally {
    clearTimeout(timer);
  }
}

function event(text, t = Date.now() / 1000) {
  state.events.push({ t, text });
  if (state.events.length > 200) state.events.shift();
  const item = document.createElement("li");
  item.textContent = new Date(t * 1000).toLocaleTimeString() + "  " + text;
  $("#events").prepend(item);
}

// ---- Polling ----

async function pollNode(node) {
  const entry = state.nodes.get(node.id);
  const since = entry.lastT || 0;
  try {
    const status = await getJson(`http://${node.http}/api/status?since=${since}`);
    for (const second of status.series) entry.series.set(second.t, second);
    if (status.series.length) entry.lastT = status.series[status.series.length - 1].t;
    const horizon = Date.now() / 1000 - WINDOW_S;
    for (const t of entry.series.keys()) if (t < horizon) entry.series.delete(t);
    if (entry.status && status.uptime_s + 2 < entry.status.uptime_s) event(`node ${node.id} restarted`);
    entry.status = status;
    entry.fails = 0;
  } catch (error) {
    entry.fails += 1;
  }
  const next = entry.fails >= DOWN_AFTER ? "down" : entry.fails >= SUSPECT_AFTER ? "suspect" : "up";
  if (next !== entry.state) {
    if (next === "down" || (next === "up" && entry.state === "down")) event(`node ${node.id} ${next}`);
    entry.state = next;
  }
}

async function poll() {
  await Promise.all(state.cluster.nodes.map(pollNode));
  if (token && state.control) {
    try {
      state.control = await getJson("/api/control", { headers: { "x-tally-token": token } });
    } catch (error) {
      $("#control-message").textContent = "control panel: " + error.message;
    }
  }
  noticeLeaders();
  render();
}

// Each shard's leader: the replica that says it leads at the highest term (a deposed leader may
// not know yet). A change is marked on the charts.
function noticeLeaders() {
  const newest = new Map(); // shard -> {id, term}
  for (const [id, entry] of state.nodes) {
    if (entry.state !== "up" || !entry.status) continue;
    for (const group of entry.status.groups) {
      if (group.role !== "Leader") continue;
      const best = newest.get(group.shard);
      if (!best || group.term > best.term) newest.set(group.shard, { id, term: group.term });
    }
  }
  for (const [shard, { id }] of newest) {
    const before = state.leaders.get(shard);
    if (before !== id) {
      if (before !== undefined) event(`shard ${shard}: leader ${before} -> ${id}`);
      state.leaders.set(shard, id);
    }
  }
}

// ---- Merging ----

function mergedSeries() {
  const byT = new Map();
  for (const entry of state.nodes.values()) {
    for (const [t, second] of entry.series) {
      let merged = byT.get(t);
      if (!merged) {
        merged = { t, committed: 0, aborted: {}, latency: new Array(BOUNDS.length + 1).fill(0), max_ms: 0, flows: null, fsyncs: 0, wal_bytes: 0 };
        byT.set(t, merged);
      }
      merged.committed += second.committed;
      merged.fsyncs += second.fsyncs;
      merged.wal_bytes += second.wal_bytes;
      for (const [reason, count] of Object.entries(second.aborted)) merged.aborted[reason] = (merged.aborted[reason] || 0) + count;
      second.latency.forEach((count, index) => (merged.latency[index] += count));
      merged.max_ms = Math.max(merged.max_ms, second.max_ms);
      if (second.flows) {
        merged.flows = merged.flows || second.flows.map(() => 0);
        second.flows.forEach((count, index) => (merged.flows[index] += count));
      }
    }
  }
  return [...byT.values()].sort((a, b) => a.t - b.t);
}

// The q-quantile of bucketed counts, in ms, interpolated within its bucket on a log scale.
function quantile(buckets, q, maxMs) {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (!total) return null;
  let seen = 0;
  for (let index = 0; index < buckets.length; index++) {
    if (seen + buckets[index] >= q * total) {
      const low = index === 0 ? BOUNDS[0] / 2 : BOUNDS[index - 1];
      const high = index < BOUNDS.length ? BOUNDS[index] : BOUNDS[BOUNDS.length - 1] * 2;
      const within = buckets[index] ? (q * total - seen) / buckets[index] : 1;
      const ms = low * (high / low) ** within * 1000;
      return maxMs ? Math.min(ms, maxMs) : ms;
    }
    seen += buckets[index];
  }
  return maxMs;
}

// ---- Charts ----

let throughputChart = null;
let latencyChart = null;
const REASONS = ["InsufficientFunds", "UnknownAccount", "LockConflict", "ParticipantUnavailable", "Overflow", "Timeout", "InvalidRequest", "PresumedAbort", "FundsHeld"];
const COLORS = ["#cf222e", "#8250df", "#bf8700", "#0969da", "#6e7781", "#fb8f44", "#a40e26", "#e85aad", "#1b7c83"];

function markers() {
  return {
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          ctx.save();
          ctx.strokeStyle = "#cf222e";
          ctx.fillStyle = "#cf222e";
          ctx.setLineDash([4, 4]);
          ctx.font = `${10 * devicePixelRatio}px sans-serif`;
          for (const marker of state.events) {
            const x = u.valToPos(marker.t, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillText(marker.text, x + 3, u.bbox.top + 12 * devicePixelRatio);
          }
          ctx.restore();
        },
      ],
    },
  };
}

function makeCharts() {
  const width = Math.max(400, $("#chart-throughput").clientWidth || 600);
  throughputChart = new uPlot(
    {
      width, height: 220, plugins: [markers()],
      series: [{}, { label: "committed", stroke: "#1a7f37", width: 2 },
        ...REASONS.map((reason, index) => ({ label: "aborted: " + reason, stroke: COLORS[index], show: true }))],
      axes: [{}, { size: 60 }],
    },
    [[], [], ...REASONS.map(() => [])],
    $("#chart-throughput"),
  );
  latencyChart = new uPlot(
    {
      width, height: 220, plugins: [markers()],
      series: [{}, { label: "p50", stroke: "#0969da" }, { label: "p99", stroke: "#bf8700" },
        { label: "p99.9", stroke: "#cf222e" }, { label: "max", stroke: "#6e7781", dash: [4, 4] }],
      scales: { y: { distr: 3 } },
      axes: [{}, { size: 60 }],
    },
    [[], [], [], [], []],
    $("#chart-latency"),
  );
}

// ---- Rendering ----

function text(selector, value) {
  const element = $(selector);
  if (element && element.textContent !== String(value)) element.textContent = value;
}

function render() {
  const nodes = [...state.nodes.entries()];
  const count = (which) => nodes.filter(([, entry]) => entry.state === which).length;
  text("#nodes-up", count("up"));
  text("#nodes-suspect", count("suspect"));
  text("#nodes-down", count("down"));
  const any = nodes.map(([, entry]) => entry.status).find(Boolean);
  if (any) text("#version", any.version);

  const series = mergedSeries();
  const complete = series.length > 1 ? series.slice(0, -1) : series; // the newest second may lack a node
  const last = complete[complete.length - 1];
  if (last) {
    text("#committed-rate", fmt(last.committed));
    text("#p99", fmt(quantile(last.latency, 0.99, last.max_ms), 1) + " ms");
  }
  renderNodes(nodes);
  renderCharts(complete);
  renderPanels(nodes, complete);
  renderFlows(last);
  renderRecent(nodes);
  renderControl();
}

function heartbeatAge(id) {
  // The freshest answer any other node got from this one.
  let best = null;
  for (const [other, entry] of state.nodes) {
    if (other === id || entry.state !== "up" || !entry.status) continue;
    const peer = entry.status.peers.find((p) => p.node === id);
    if (peer && peer.age_ms !== null && (best === null || peer.age_ms < best)) best = peer.age_ms;
  }
  return best;
}

function renderNodes(nodes) {
  const body = $("#nodes tbody");
  for (const [id, entry] of nodes) {
    let row = $(`#node-row-${id}`);
    if (!row) {
      row = document.createElement("tr");
      row.id = `node-row-${id}`;
      row.innerHTML = `<td>${id}</td><td class="state"></td><td class="shards"></td><td class="age"></td><td class="lsn"></td>
        <td class="indoubt"></td><td class="uptime"></td><td class="cpu"></td><td class="memory"></td><td class="disk"></td>
        <td class="control-only">
          <button id="btn-kill-${id}" data-action="kill" data-node="${id}">kill</button>
          <button id="btn-stop-${id}" data-action="stop" data-node="${id}">stop</button>
          <button id="btn-restart-${id}" data-action="restart" data-node="${id}">restart</button>
          <button id="btn-pause-${id}" data-action="pause" data-node="${id}">pause</button>
          <button id="btn-resume-${id}" data-action="resume" data-node="${id}">resume</button>
          <button id="btn-partition-${id}" data-action="partition" data-node="${id}">partition</button>
          <button id="btn-heal-${id}" data-action="heal" data-node="${id}">heal</button>
        </td>`;
      body.appendChild(row);
    }
    const status = entry.state === "up" ? entry.status : null;
    const control = state.control && state.control.nodes.find((n) => n.id === id);
    const stateText = entry.state + (control && control.state !== "running" ? ` (${control.state})` : "");
    const cell = row.querySelector(".state");
    cell.textContent = stateText;
    cell.className = `state state-${entry.state}`;
    row.dataset.state = entry.state;
    row.querySelector(".shards").textContent = status
      ? status.groups.map((g) => `${g.shard}:${g.role === "Leader" ? "L" : "F"}`).join(" ")
      : "-";
    const age = heartbeatAge(id);
    row.querySelector(".age").textContent = age === null ? "-" : fmt(age) + " ms";
    row.querySelector(".lsn").textContent = status ? fmt(status.wal.durable_lsn) : "-";
    row.querySelector(".indoubt").textContent = status ? fmt(status.in_doubt) : "-";
    row.querySelector(".uptime").textContent = status ? seconds(status.uptime_s) : "-";
    row.querySelector(".cpu").textContent = status ? fmt(status.process.cpu_percent) + " %" : "-";
    row.querySelector(".memory").textContent = status ? bytes(status.process.rss_bytes) : "-";
    row.querySelector(".disk").textContent = status ? bytes(status.process.disk_free_bytes) : "-";
  }
}

function renderCharts(series) {
  if (!throughputChart) makeCharts();
  const ts = series.map((s) => s.t);
  throughputChart.setData([ts, series.map((s) => s.committed), ...REASONS.map((reason) => series.map((s) => s.aborted[reason] || 0))]);
  const q = (p) => series.map((s) => quantile(s.latency, p, s.max_ms));
  latencyChart.setData([ts, q(0.5), q(0.99), q(0.999), series.map((s) => (s.max_ms > 0 ? s.max_ms : null))]);
}

function definitions(selector, rows) {
  const list = $(`${selector} dl`);
  list.innerHTML = rows.map(([term, value, id]) => `<dt>${term}</dt><dd${id ? ` id="${id}"` : ""}>${value}</dd>`).join("");
}

function sum(nodes, pick) {
  return nodes.filter(([, e]) => e.state === "up" && e.status).reduce((total, [, e]) => total + pick(e.status), 0);
}

function worst(nodes, pick) {
  return nodes.filter(([, e]) => e.state === "up" && e.status).reduce((most, [, e]) => Math.max(most, pick(e.status) || 0), 0);
}

function renderPanels(nodes, series) {
  const recent = series.slice(-10);
  const perSecond = (pick) => (recent.length ? recent.reduce((t, s) => t + pick(s), 0) / recent.length : 0);
  definitions("#panel-2pc", [
    ["in flight", fmt(sum(nodes, (s) => s.in_flight)), "twopc-in-flight"],
    ["awaiting acknowledgement", fmt(sum(nodes, (s) => s.awaiting_ack))],
    ["in doubt", fmt(sum(nodes, (s) => s.in_doubt))],
    ["presumed aborts", fmt(sum(nodes, (s) => s.presumed_aborts))],
    ["prepare round p50 / p99", `${fmt(worst(nodes, (s) => s.phases.prepare.p50_ms), 2)} / ${fmt(worst(nodes, (s) => s.phases.prepare.p99_ms), 2)} ms`],
    ["decision log p50 / p99", `${fmt(worst(nodes, (s) => s.phases.decide.p50_ms), 2)} / ${fmt(worst(nodes, (s) => s.phases.decide.p99_ms), 2)} ms`],
    ["delivery p50 / p99", `${fmt(worst(nodes, (s) => s.phases.deliver.p50_ms), 2)} / ${fmt(worst(nodes, (s) => s.phases.deliver.p99_ms), 2)} ms`],
  ]);
  const fsyncs = sum(nodes, (s) => s.wal.group_commits);
  definitions("#panel-wal", [
    ["group commits/s", fmt(perSecond((s) => s.fsyncs || 0)), "wal-commits-rate"],
    ["records per group commit", fmt(fsyncs ? sum(nodes, (s) => s.wal.records) / fsyncs : 0, 1)],
    ["written/s", bytes(perSecond((s) => s.wal_bytes || 0))],
    ["fsync p50 / p99 (worst node)", `${fmt(worst(nodes, (s) => s.wal.fsync_p50_ms), 2)} / ${fmt(worst(nodes, (s) => s.wal.fsync_p99_ms), 2)} ms`],
  ]);
  const abortedRecently = {};
  for (const s of recent) for (const [reason, count] of Object.entries(s.aborted)) abortedRecently[reason] = (abortedRecently[reason] || 0) + count;
  definitions("#panel-contention", [
    ["lock conflicts (all time)", fmt(sum(nodes, (s) => s.lock_conflicts)), "lock-conflicts"],
    ["funds held (all time)", fmt(sum(nodes, (s) => s.funds_held))],
    ...Object.entries(abortedRecently).map(([reason, count]) => [`aborted ${reason}, last 10 s`, fmt(count)]),
  ]);
  const body = $("#panel-replication tbody");
  const rows = [];
  for (const [shard, leader] of [...state.leaders.entries()].sort((a, b) => a[0] - b[0])) {
    const entry = state.nodes.get(leader);
    const group = entry && entry.state === "up" && entry.status && entry.status.groups.find((g) => g.shard === shard && g.role === "Leader");
    if (!group) {
      rows.push(`<tr><td>${shard}</td><td>${leader}?</td><td colspan="4">-</td></tr>`);
      continue;
    }
    const health = (r) => (r.health === "Current" ? "ok" : r.health === "Lagging" ? `-${fmt(r.lag)}` : r.health.toLowerCase());
    const replicas = group.replicas.map((r) => `${r.node}:${health(r)}`).join(" ");
    rows.push(`<tr><td>${shard}</td><td>${leader}</td><td>${group.term}</td><td>${fmt(group.commit)}</td><td>${fmt(group.applied)}</td><td>${replicas}</td></tr>`);
  }
  body.innerHTML = rows.join("");
}

function renderFlows(last) {
  const shards = state.cluster.shard_count;
  const flows = (last && last.flows) || new Array(shards * shards).fill(0);
  let html = "<tr><th>from \\ to</th>" + [...Array(shards).keys()].map((s) => `<th>${s}</th>`).join("") + "</tr>";
  for (let from = 0; from < shards; from++) {
    html += `<tr><th>${from}</th>` + [...Array(shards).keys()].map((to) => `<td id="flow-${from}-${to}">${fmt(flows[from * shards + to])}</td>`).join("") + "</tr>";
  }
  $("#flows").innerHTML = html;
}

function renderRecent(nodes) {
  const all = nodes.flatMap(([, e]) => (e.state === "up" && e.status ? e.status.recent : []));
  all.sort((a, b) => b.at_ms - a.at_ms);
  $("#recent tbody").innerHTML = all
    .slice(0, 15)
    .map((r) => `<tr><td>${new Date(r.at_ms).toLocaleTimeString()}</td><td>${r.id}</td><td>${r.debit}</td><td>${r.credit}</td><td>${fmt(r.amount)}</td><td>${r.outcome}</td><td>${fmt(r.ms, 1)}</td></tr>`)
    .join("");
}

function renderControl() {
  if (!state.control) return;
  text("#load-state", state.control.load);
}

// ---- Actions ----

async function control(action, node) {
  const url = `/api/control/${action}` + (node ? `?node=${node}` : "");
  $("#control-message").textContent = `${action}${node ? " node " + node : ""}...`;
  try {
    const answer = await getJson(url, { method: "POST", headers: { "x-tally-token": token }, timeout: 30000 });
    $("#control-message").textContent = answer.message;
    if (node) event(`${action} node ${node} (control panel)`);
  } catch (error) {
    $("#control-message").textContent = `${action} failed: ${error.message}`;
  }
}

async function audit() {
  text("#audit-result", "running...");
  try {
    const verdict = await getJson("/api/audit", { timeout: 30000 });
    state.audit = verdict;
    text("#audit-result", verdict.conserved ? "money conserved" : "VIOLATED: " + verdict.violations.join("; "));
    $("#audit-result").className = verdict.conserved ? "state-up" : "state-down";
    event(verdict.conserved ? "audit: money conserved" : "audit: VIOLATED");
  } catch (error) {
    text("#audit-result", "failed: " + error.message);
  }
}

async function lookup(submitted) {
  submitted.preventDefault();
  const kind = $("#lookup-kind").value;
  const id = $("#lookup-id").value.trim();
  try {
    const answer = await getJson(`/api/${kind}/${encodeURIComponent(id)}`, { timeout: 10000 });
    $("#lookup-result").textContent = JSON.stringify(answer, null, 2);
  } catch (error) {
    $("#lookup-result").textContent = error.message;
  }
}

async function start() {
  state.cluster = await getJson("/api/cluster", { timeout: 5000 });
  for (const node of state.cluster.nodes) state.nodes.set(node.id, { fails: 0, state: "suspect", series: new Map(), status: null });
  if (token) {
    try {
      state.control = await getJson("/api/control", { headers: { "x-tally-token": token } });
      document.body.classList.add("control");
      $("#control").hidden = false;
    } catch (error) {
      state.control = null;
    }
  }
  document.addEventListener("click", (click) => {
    const button = click.target.closest("button[data-action]");
    if (button) control(button.dataset.action, Number(button.dataset.node));
  });
  $("#btn-heal").addEventListener("click", () => control("heal-all"));
  $("#btn-load-start").addEventListener("click", () => control("load-start"));
  $("#btn-load-stop").addEventListener("click", () => control("load-stop"));
  $("#btn-audit").addEventListener("click", audit);
  $("#lookup").addEventListener("submit", lookup);
  const tick = async () => {
    try {
      await poll();
    } finally {
      setTimeout(tick, POLL_MS);
    }
  };
  tick();
}

start().catch((error) => {
  document.body.insertAdjacentHTML("afterbegin", `<p class="state-down">console: ${error.message}</p>`);
});
