// The Cohort dashboard: plain DOM, no build step. Every figure comes from the API with the signed-in key;
// the page itself holds no data. Text from the data is only ever set as textContent, never as HTML.

const KEY = "cohort.key";
const $ = (id) => document.getElementById(id);
const DAY_MS = 86400000;
let who = null;
let registry = [];
let range = null; // {from: "YYYY-MM-DD", to: "YYYY-MM-DD" (exclusive), granularity}
const charts = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

class ApiError extends Error {
  constructor(status, code, message) { super(`${code}: ${message}`); this.status = status; this.code = code; }
}

// The server runs at most two queries of one caller at once (429 beyond): the page keeps to that, and
// retries a 429 (another tab of the same key may hold a slot) after a short wait.
const MAX_IN_FLIGHT = 2;
let inFlight = 0;
const waiting = [];

async function api(path, options = {}) {
  if (inFlight >= MAX_IN_FLIGHT) await new Promise((resolve) => waiting.push(resolve));
  inFlight++;
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        return await apiOnce(path, options);
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 429 || attempt >= 8) throw error;
        await new Promise((resolve) => setTimeout(resolve, 150 * attempt));
      }
    }
  } finally {
    inFlight--;
    const next = waiting.shift();
    if (next) next();
  }
}

async function apiOnce(path, options) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`, ...(options.headers || {}) };
  if (options.json !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: options.method || "GET", headers,
    body: options.json !== undefined ? JSON.stringify(options.json) : undefined });
  if (options.raw) {
    if (!response.ok) throw await errorOf(response);
    return response;
  }
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = null; }
  if (!response.ok) throw new ApiError(response.status, body?.params?.err || `HTTP ${response.status}`,
    body?.params?.errmsg || text.slice(0, 200));
  return body;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body?.params?.err || `HTTP ${response.status}`, body?.params?.errmsg || "");
  } catch { return new ApiError(response.status, `HTTP ${response.status}`, response.statusText); }
}

const isoDay = (ms) => new Date(ms).toISOString().slice(0, 10);
const can = (permission) => who && who.permissions.includes(permission);
const isAdmin = () => who && (who.role === "admin" || who.role === "tenant_admin");

function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function csvCell(value) {
  const text = value === null || value === undefined ? "" : String(value);
  return /[",\n\r]/.test(text) || /^[=+\-@]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

function table(columns, rows, caption) {
  const head = el("tr", {}, ...columns.map((c) => el("th", { scope: "col", text: c })));
  const body = rows.map((row) => el("tr", {}, ...row.map((v) => (v instanceof Node ? el("td", {}, v)
    : el("td", { text: v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v) })))));
  return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    el("table", {}, el("caption", { text: caption }), el("thead", {}, head), el("tbody", {}, ...body)));
}

function showError(target, error) {
  target.replaceChildren(el("p", { class: "error", role: "alert", text: error.message || String(error) }));
}

// ---- sign-in -------------------------------------------------------------------------------------------

async function signIn(started) {
  try {
    who = (await api("/v1/whoami")).result;
  } catch (error) {
    sessionStorage.removeItem(KEY);
    $("sign-in-error").textContent = error.status === 401 ? "That key was not accepted." : error.message;
    return;
  }
  $("sign-in-error").textContent = "";
  $("sign-in").hidden = true;
  $("session").hidden = false;
  $("who-tenant").textContent = who.tenant || "all tenants";
  $("who-role").textContent = who.role;
  $("who-scope").textContent = who.scope ? who.scope.text : "whole tenant";
  $("views").hidden = false;
  $("tab-educator").hidden = !can("read_metrics");
  $("tab-admin").hidden = !isAdmin();
  if (can("read_metrics")) {
    showView("educator");
    await loadEducator();
  } else if (isAdmin()) {
    showView("admin");
  } else {
    $("educator-status").textContent = `Role ${who.role} has no dashboard view.`;
  }
  const ms = Math.round(performance.now() - started);
  document.body.dataset.firstViewMs = String(ms);
  $("first-view").textContent = `first view in ${ms} ms`;
  if (isAdmin()) loadAdmin();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  who = null;
  range = null;
  for (const chart of charts.splice(0)) chart.destroy();
  $("figures").replaceChildren();
  $("at-risk-body").replaceChildren();
  for (const id of ["health", "failed", "failed-rows", "audit", "tables", "event-lineage"]) $(id).replaceChildren();
  $("educator").hidden = $("admin").hidden = $("views").hidden = $("session").hidden = true;
  $("sign-in").hidden = false;
  delete document.body.dataset.firstViewMs;
  delete document.body.dataset.ready;
  $("first-view").textContent = "";
  $("api-key").value = "";
  $("api-key").focus();
}

function showView(name) {
  for (const view of ["educator", "admin"]) {
    $(view).hidden = view !== name;
    $(`tab-${view}`).setAttribute("aria-pressed", String(view === name));
  }
}

// ---- educator view ---------------------------------------------------------------------------------------

async function loadEducator() {
  const status = $("educator-status");
  status.textContent = "Loading…";
  try {
    registry = (await api("/v1/metrics")).result.metrics;
    if (!range) range = await defaultRange();
    $("range-from").value = range.from;
    $("range-to").value = isoDay(Date.parse(range.to) - DAY_MS);
    $("range-granularity").value = range.granularity;
    await drawFigures();
    status.textContent = `${registry.length} metrics, ${range.from} to ${isoDay(Date.parse(range.to) - DAY_MS)}, by ${range.granularity}`;
  } catch (error) {
    status.textContent = "";
    showError($("figures"), error);
  }
}

// The last 30 days that hold data: the metric API answers by event time, and data may lie in the past
// (the demo's world ends months ago), so the newest non-empty day of the first metric ends the range.
async function defaultRange() {
  const now = Date.now();
  const probe = registry.find((m) => m.granularities.includes("day"));
  let end = now + DAY_MS;
  if (probe) {
    const answer = await api(`/v1/metrics/${encodeURIComponent(probe.name)}?` + new URLSearchParams({
      from: isoDay(now - 399 * DAY_MS), to: isoDay(now + DAY_MS), granularity: "day" }));
    const days = answer.result.series.filter((c) => c.value !== null || c.suppressed).map((c) => Date.parse(c.bucket));
    if (days.length) end = Math.max(...days) + DAY_MS;
  }
  return { from: isoDay(end - 30 * DAY_MS), to: isoDay(end), granularity: "day" };
}

async function drawFigures() {
  for (const chart of charts.splice(0)) chart.destroy();
  const holder = $("figures");
  holder.replaceChildren();
  const answers = await Promise.all(registry.map((metric) => fetchMetric(metric).then(
    (answer) => ({ metric, answer }), (error) => ({ metric, error }))));
  for (const { metric, answer, error } of answers) holder.append(figure(metric, answer, error));
  for (const { metric, answer } of answers) if (answer) drawChart(metric, answer);
  await drawAtRisk(answers);
  document.body.dataset.ready = "1";
}

function granularityFor(metric) {
  return metric.granularities.includes(range.granularity) ? range.granularity : metric.granularities[0];
}

function fetchMetric(metric) {
  const params = new URLSearchParams({ from: range.from, to: range.to, granularity: granularityFor(metric) });
  return api(`/v1/metrics/${encodeURIComponent(metric.name)}?${params}`).then((body) => body.result);
}

function cellText(cell, k) {
  return cell.suppressed ? `suppressed (fewer than ${k} learners)` : String(cell.value);
}

function figure(metric, answer, error) {
  const id = `fig-${metric.name}`;
  const card = el("article", { class: "figure", id, "data-metric": metric.name, "aria-labelledby": `${id}-title` },
    el("h3", { id: `${id}-title`, text: metric.name.replaceAll("_", " ") }),
    el("p", { class: "desc", text: `${metric.description} (${metric.unit})` }));
  if (error) {
    card.append(el("p", { class: "error", role: "alert", text: error.message }));
    return card;
  }
  const series = answer.series;
  const k = answer.suppression.k;
  const suppressed = answer.suppression.suppressed_cells;
  const fresh = answer.freshness.as_of ? `data received up to ${answer.freshness.as_of.replace("T", " ").slice(0, 19)} UTC`
    : "no data yet";
  const complete = answer.completeness.window_closed ? "window closed: figures final"
    : `window open: ${answer.completeness.note || "figures may still change"}`;
  card.append(
    el("p", { class: "meta" },
      el("span", { class: "freshness", text: fresh }), " · ",
      el("span", { class: "completeness", text: complete }),
      suppressed ? el("span", { class: "suppression", text: ` · ${suppressed} cells suppressed (k=${k})` }) : null),
    el("p", { class: "summary", text: series.length ? summary(series, answer.granularity, metric.unit)
      : "No events in this range and scope." }),
    el("div", { class: "chart", id: `${id}-chart`, role: "img",
      "aria-label": `${metric.name} by ${answer.granularity}: ${series.length} points; the table below has the values` }),
    el("details", { class: "alt" }, el("summary", { text: "Table of values" }),
      table(["bucket", "value"], series.map((c) => [c.bucket.slice(0, 10), cellText(c, k)]), `${metric.name} by ${answer.granularity}`)),
    el("div", { class: "actions" },
      el("button", { type: "button", class: "lineage", onclick: () => openLineage(metric), text: "Lineage",
        "aria-label": `Lineage of ${metric.name}` }),
      el("button", { type: "button", class: "csv", onclick: () => downloadCsv(metric, answer), text: "CSV",
        "aria-label": `Download ${metric.name} as CSV` }),
      el("button", { type: "button", class: "events", onclick: (e) => exportEvents(metric, e.target),
        text: "Events (Parquet)", "aria-label": `Export the events behind ${metric.name} as Parquet` })));
  return card;
}

const round = (v) => Math.round(v * 1000) / 1000;

// Latest and highest, not a sum: distinct counts (learners, devices) do not add up across buckets.
function summary(series, granularity, unit) {
  const shown = series.filter((c) => !c.suppressed && c.value !== null);
  if (!shown.length) return `${series.length} ${granularity} buckets, all suppressed`;
  const last = shown[shown.length - 1];
  const high = shown.reduce((a, b) => (b.value > a.value ? b : a));
  return `${series.length} ${granularity} buckets; latest ${round(last.value)} ${unit} (${last.bucket.slice(0, 10)}); ` +
    `highest ${round(high.value)} (${high.bucket.slice(0, 10)})`;
}

// By day, a day with no cell had no event in scope (the API leaves empty cells out): drawn as 0, so a line
// does not bridge the gap. Other granularities are drawn as the cells come.
function chartPoints(answer) {
  const cells = new Map(answer.series.map((c) => [Date.parse(c.bucket), c]));
  let xs = [...cells.keys()];
  if (answer.granularity === "day" && xs.length) {
    xs = [];
    for (let t = Date.parse(answer.from.slice(0, 10)); t < Date.parse(answer.to); t += DAY_MS) xs.push(t);
  }
  const ys = xs.map((t) => { const c = cells.get(t); return c === undefined ? 0 : c.suppressed ? null : c.value; });
  return [xs.map((t) => t / 1000), ys];
}

function drawChart(metric, answer) {
  const target = $(`fig-${metric.name}-chart`);
  if (!target || !window.uPlot || !answer.series.length) return;
  const [xs, ys] = chartPoints(answer);
  const width = Math.max(260, Math.min(target.clientWidth || 560, 900));
  const bars = answer.series.length < 3 || answer.granularity !== "day";
  const chart = new window.uPlot({
    width, height: 180, legend: { show: false },
    axes: [{ stroke: "#1f2933" }, { stroke: "#1f2933", size: 56 }],
    series: [{}, { label: metric.unit, stroke: "#1457a6", width: 2, fill: "rgba(20,87,166,0.12)",
      paths: bars ? window.uPlot.paths.bars({ size: [0.6, 40] }) : undefined, points: { show: bars ? false : xs.length < 40 } }],
    scales: { x: { time: true } },
  }, [xs, ys], target);
  charts.push(chart);
}

function downloadCsv(metric, answer) {
  const lines = ["bucket,group,value,suppressed"];
  for (const c of answer.series) lines.push([c.bucket, c.group, c.value, c.suppressed].map(csvCell).join(","));
  download(`${metric.name}_${answer.from.slice(0, 10)}_${answer.to.slice(0, 10)}_${answer.granularity}.csv`,
    new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
}

async function exportEvents(metric, button) {
  const dataset = (metric.sources || []).find((s) => s === "telemetry") || "telemetry";
  const note = button.parentElement.querySelector(".export-note") || button.parentElement.appendChild(
    el("span", { class: "export-note", role: "status" }));
  note.textContent = "Exporting…";
  try {
    const response = await api(`/v1/exhaust/${dataset}?` + new URLSearchParams({ from: range.from, to: range.to,
      format: "parquet" }), { raw: true });
    download(`${dataset}_${range.from}_${range.to}.parquet`, await response.blob());
    note.textContent = "";
  } catch (error) {
    note.textContent = error.status === 404 || error.status === 405 ? "Event export is not available on this server."
      : error.message;
  }
}

async function openLineage(metric) {
  const dialog = $("lineage-dialog");
  const body = $("lineage-body");
  $("lineage-title").textContent = `Lineage of ${metric.name}`;
  body.replaceChildren(el("p", { text: "Loading…" }));
  dialog.showModal();
  try {
    const params = new URLSearchParams({ from: range.from, to: range.to, granularity: granularityFor(metric) });
    const l = (await api(`/v1/lineage/metric/${encodeURIComponent(metric.name)}?${params}`)).result;
    body.replaceChildren(
      el("p", { text: l.description }),
      el("h3", { text: "Datasets" }),
      table(["name", "version", "description"], (l.datasets || []).map((d) => [d.name || d.table, [d.version, d.config_version].filter(Boolean).join(", config "), d.description || ""]), "datasets read"),
      (l.rollups || []).length ? el("h3", { text: "Rollups" }) : null,
      (l.rollups || []).length ? table(["name", "description"], l.rollups.map((d) => [d.name || d.table, d.description || ""]), "rollups read") : null,
      el("h3", { text: "Pipeline stages" }),
      el("ol", { class: "stages" }, ...(l.pipeline || []).map((s) => el("li", { text: typeof s === "string" ? s : `${s.name}${s.role ? `: ${s.role}` : ""}` }))),
      el("h3", { text: `Query (${l.query.dialect})` }),
      el("pre", { class: "sql", tabindex: "0", text: l.query.sql }),
      el("p", { text: `Parameters: ${JSON.stringify(l.query.params)}` }),
      l.scope ? el("p", { text: `Scope: ${l.scope.scope} (${l.scope.covers})` }) : null,
      el("p", { text: `Suppression: ${l.suppression.rule}` }));
  } catch (error) {
    showError(body, error);
  }
  $("lineage-close").focus();
}

// The at-risk table comes from a learner-level metric of the registry, when the server has one.
async function drawAtRisk(answers) {
  const target = $("at-risk-body");
  const found = answers.find(({ metric }) => /at_risk/.test(metric.name));
  if (!found) {
    target.replaceChildren(el("p", { class: "empty", text: "No at-risk learner metric on this server yet: nothing to show." }));
    return;
  }
  if (found.error) { showError(target, found.error); return; }
  const rows = found.answer.series.filter((c) => typeof c.group === "string" && /^u:[0-9a-f]{32}$/.test(c.group));
  if (!rows.length) {
    target.replaceChildren(el("p", { class: "empty", text: "No learner is at risk in this range and scope." }));
    return;
  }
  target.replaceChildren(table(["learner", "reasons", "evidence", "identity"], rows.map((c) => {
    const cell = el("span", { class: "identity" });
    const reveal = el("button", { type: "button", class: "reveal", text: "Reveal", "aria-label": `Reveal ${c.group}`,
      onclick: () => revealLearner(c.group, found.answer.tenant, cell, reveal) });
    cell.append(reveal);
    return [c.group, (c.reasons || []).join("; ") || String(c.value ?? ""), c.evidence ?? "", cell];
  }), "learners at risk"));
}

async function revealLearner(pseudonym, tenant, cell, button) {
  button.disabled = true;
  try {
    const body = (await api("/v1/learners/reidentify", { method: "POST",
      json: who.tenant ? { pseudonyms: [pseudonym] } : { pseudonyms: [pseudonym], tenant } })).result;
    const learner = (body.learners || []).find((l) => l.pseudonym === pseudonym) || body.learners?.[0];
    cell.replaceChildren(el("span", { text: learner ? learner.id : `withheld: ${body.withheld?.[0]?.reason || "not held"}` }));
  } catch (error) {
    cell.replaceChildren(el("span", { class: "error", text: error.message }));
  }
}

// ---- administrator view ----------------------------------------------------------------------------------

function loadAdmin() {
  loadHealth();
  loadFailed();
  loadAudit();
  loadTables();
}

function prometheus(text) {
  const values = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!match) continue;
    values[match[1]] = (values[match[1]] || 0) + Number(match[3]);
  }
  return values;
}

async function loadHealth() {
  const target = $("health");
  try {
    const [healthResponse, metricsResponse] = await Promise.all([fetch("/health"), fetch("/metrics")]);
    const health = await healthResponse.json();
    const m = prometheus(await metricsResponse.text());
    const rows = [
      ["status", health.status], ["events received", m.cohort_events_received_total],
      ["events stored", m.cohort_events_stored_total], ["events failed", m.cohort_events_failed_total],
      ["events duplicate", m.cohort_events_duplicate_total], ["events in flight", m.cohort_events_in_flight],
      ["unaccounted (always 0)", m.cohort_events_unaccounted], ["backlog (events)", health.pipeline.backlog_events],
      ["lag (oldest unprocessed, s)", health.pipeline.oldest_unprocessed_age_seconds],
      ["last error", health.pipeline.last_error || "none"]];
    target.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }),
      el("dd", { "data-key": k, text: v === undefined ? "n/a" : String(v) })]));
  } catch (error) { showError(target, error); }
}

async function loadFailed() {
  const target = $("failed");
  try {
    const rows = (await api("/v1/query", { method: "POST", json: { sql:
      "SELECT error_code, stage, count(*) AS events FROM failed_events GROUP BY error_code, stage ORDER BY events DESC, error_code" } })).result;
    if (!rows.length) { target.replaceChildren(el("p", { class: "empty", text: "No failed events." })); return; }
    target.replaceChildren(table(["code", "stage", "events", ""], rows.map((r) => [r.error_code, r.stage, r.events,
      el("button", { type: "button", class: "drill", "data-code": r.error_code, text: "Show events",
        "aria-label": `Show quarantined events with code ${r.error_code}`, onclick: () => drillFailed(r.error_code) })]),
      "failed events by code"));
  } catch (error) { showError(target, error); }
}

async function drillFailed(code) {
  const target = $("failed-rows");
  try {
    const answer = await api("/v1/query", { method: "POST", json: {
      sql: "SELECT * FROM failed_events WHERE error_code = $code LIMIT 50", params: { code } } });
    const rows = answer.result;
    const columns = answer.meta?.columns?.map((c) => c.name || c) || Object.keys(rows[0] || {});
    target.replaceChildren(el("h4", { text: `Quarantined events with code ${code} (${rows.length} shown)` }),
      table(columns, rows.map((r) => columns.map((c) => r[c])), `quarantined events ${code}`));
    target.querySelector(".table-wrap").focus();
  } catch (error) { showError(target, error); }
}

async function lookUpEvent(event) {
  event.preventDefault();
  const target = $("event-lineage");
  const mid = $("event-mid").value.trim();
  try {
    target.textContent = JSON.stringify((await api(`/v1/lineage/event/${encodeURIComponent(mid)}`)).result, null, 2);
  } catch (error) { target.textContent = error.message; }
}

async function loadAudit() {
  const target = $("audit");
  try {
    const entries = [];
    let since = 0;
    for (let page = 0; page < 20; page++) { // the newest entries: follow next_since to the end
      const body = await api(`/v1/audit?since=${since}&limit=500`);
      entries.push(...body.result.entries);
      if (!body.meta?.more) break;
      since = body.meta.next_since;
    }
    const newest = entries.slice(-100).reverse();
    target.replaceChildren(table(["seq", "at", "actor", "role", "action", "target", "outcome"], newest.map((e) =>
      [e.seq, e.at, e.actor_subject, e.actor_role, e.action, e.target, e.outcome]), `audit log, last ${newest.length} entries`));
  } catch (error) { showError(target, error); }
}

async function loadTables() {
  const target = $("tables");
  try {
    const tables = (await api("/v1/tables")).result.tables;
    target.replaceChildren(table(["dataset", "description", "rows", "columns"], tables.map((t) =>
      [t.name, t.description, t.rows, t.columns.length]), "datasets you may query"));
  } catch (error) { showError(target, error); }
}

// ---- wiring ----------------------------------------------------------------------------------------------

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const started = performance.now();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  signIn(started);
});
$("sign-out").addEventListener("click", signOut);
$("tab-educator").addEventListener("click", () => showView("educator"));
$("tab-admin").addEventListener("click", () => showView("admin"));
$("lineage-close").addEventListener("click", () => $("lineage-dialog").close());
$("range-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const from = $("range-from").value;
  const toInclusive = $("range-to").value;
  if (!from || !toInclusive || from > toInclusive) {
    $("educator-status").textContent = "Choose a start date on or before the end date.";
    return;
  }
  range = { from, to: isoDay(Date.parse(toInclusive) + DAY_MS), granularity: $("range-granularity").value };
  delete document.body.dataset.ready;
  await loadEducator();
});
$("health-refresh").addEventListener("click", loadHealth);
$("audit-refresh").addEventListener("click", loadAudit);
$("event-lineage-form").addEventListener("submit", lookUpEvent);
if (sessionStorage.getItem(KEY)) signIn(performance.now());
