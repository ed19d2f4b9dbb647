// The Cohort dashboard: plain DOM, no build step. Every figure comes from the API with the signed-in key or
// token; the page itself holds no data. Text from the data is only ever set as textContent, never as HTML.

const KEY = "cohort.key";
const $ = (id) => document.getElementById(id);
const DAY_MS = 86400000;
const LEARNER = /^u:[0-9a-f]{32}$/;
let who = null;
let catalog = { metrics: [], reports: [] };
let range = null; // {from: "YYYY-MM-DD", to: "YYYY-MM-DD" (exclusive), granularity, days: 7|30|90|null (custom)}
let dataEnd = null; // the day after the newest day with data in the caller's scope (where presets end)
let view = { tenant: null, scope: null }; // what an admin or tenant-wide reader narrowed to (null: all of it)
let generation = 0; // bumped by each new view: answers of an older one are dropped
let started = 0;
const charts = [];
const timers = [];

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

// The server runs at most two queries of one caller at once (429 beyond): calls that run a query (metrics,
// lineage of a metric, SQL, re-identification) keep to that, and retry a 429 (another tab of the same key
// may hold a slot) after a short wait. Calls that run no query (whoami, catalog, keys, ledger, audit) are
// not held back by them.
const MAX_IN_FLIGHT = 2;
let inFlight = 0;
// Until the first chart is drawn, one query at a time: the first figure does not share the server's cores
// with the second (measured on the 90-day demo world, see the report of issue 11), then two.
const slots = () => (document.body.dataset.firstChartMs ? MAX_IN_FLIGHT : 1);
const waiting = [];

async function api(path, options = {}) {
  if (!options.query) return apiRetrying(path, options);
  if (inFlight >= slots()) {
    // a figure in view goes before those loaded ahead of being scrolled to
    await new Promise((resolve) => (options.urgent ? waiting.unshift(resolve) : waiting.push(resolve)));
  } // woken with the slot taken for it (below), so no call arriving meanwhile can take it too
  else inFlight++;
  try {
    if (options.stale && options.stale()) throw new ApiError(0, "STALE", "no longer asked for"); // signed out, new view
    return await apiRetrying(path, options);
  } finally {
    inFlight--;
    while (waiting.length && inFlight < slots()) { inFlight++; waiting.shift()(); }
  }
}

async function apiRetrying(path, options) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await apiOnce(path, options);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 429 || attempt >= 8) throw error;
      await new Promise((resolve) => setTimeout(resolve, 150 * attempt));
    }
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
const words = (name) => name.replaceAll("_", " ");

function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function csvCell(value) {
  const text = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value)
    : String(value);
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

// The identity and the catalog are asked for at once (neither runs a query); a refused key shows as such.
async function signIn() {
  const catalogCall = api("/v1/metrics").then((body) => body.result, (error) => ({ error }));
  try {
    who = (await api("/v1/whoami")).result;
  } catch (error) {
    sessionStorage.removeItem(KEY);
    $("sign-in-error").textContent = error.status === 401 ? "That key or token was not accepted." : error.message;
    return;
  }
  $("sign-in-error").textContent = "";
  $("sign-in").hidden = true;
  $("session").hidden = false;
  $("who-tenant").textContent = who.tenant || "all tenants";
  $("who-role").textContent = who.role;
  $("who-scope").textContent = who.scope ? who.scope.text : who.tenant ? "whole tenant" : "every tenant";
  $("who-via").textContent = who.via === "jwt" ? `OIDC token (${who.subject})` : who.via === "api_key"
    ? `API key ${who.subject}` : who.via;
  $("views").hidden = false;
  $("tab-educator").hidden = !can("read_metrics");
  $("tab-admin").hidden = !isAdmin();
  const answer = await catalogCall;
  if (can("read_metrics") && !answer.error) {
    catalog = { metrics: answer.metrics || [], reports: answer.reports || [] };
    setUpPicker();
    showView("educator");
    await loadEducator();
  } else if (isAdmin()) {
    showView("admin");
    firstView();
  } else { // e.g. an ingestor: it writes, and reads nothing here
    $("educator").hidden = false;
    $("range-form").hidden = true;
    $("educator-status").textContent = `Role ${who.role} has no dashboard view: it reads no figures.`;
    firstView();
  }
}

// The first view is on screen: the time from navigation start (firstChartMs, what a person waits for when
// the page opens) and from the sign-in (firstViewMs).
function firstView() {
  if (document.body.dataset.firstViewMs) return;
  const now = performance.now();
  document.body.dataset.firstChartMs = String(Math.round(now));
  document.body.dataset.firstViewMs = String(Math.round(now - started));
  $("first-view").textContent = `first view in ${Math.round(now - started)} ms`;
  while (waiting.length && inFlight < slots()) { inFlight++; waiting.shift()(); }
}

function signOut() {
  sessionStorage.removeItem(KEY);
  who = null;
  range = dataEnd = lastLedger = null;
  $("range-form").hidden = false;
  view = { tenant: null, scope: null };
  generation++;
  for (const chart of charts.splice(0)) chart.destroy();
  for (const timer of timers.splice(0)) clearInterval(timer);
  observer.disconnect();
  $("figures").replaceChildren();
  $("reports").replaceChildren();
  for (const id of ["health", "failed", "failed-rows", "audit", "tables", "keys", "event-lineage", "ledger-check"]) {
    $(id).replaceChildren();
  }
  delete $("admin").dataset.loaded;
  $("educator").hidden = $("admin").hidden = $("views").hidden = $("session").hidden = true;
  $("sign-in").hidden = false;
  for (const name of ["firstViewMs", "firstChartMs", "ready"]) delete document.body.dataset[name];
  $("first-view").textContent = "";
  $("api-key").value = "";
  $("api-key").focus();
}

function showView(name) {
  for (const v of ["educator", "admin"]) {
    $(v).hidden = v !== name;
    $(`tab-${v}`).setAttribute("aria-pressed", String(v === name));
  }
  if (name === "admin") loadAdmin();
}

// ---- scope and range -------------------------------------------------------------------------------------

const SCOPE_KINDS = [["rollup.l2", "district"], ["rollup.l3", "school"], ["rollup.l4", "class"], ["batch", "course batch"],
  ["course", "course"]];
const kindName = (kind) => (SCOPE_KINDS.find(([k]) => k === kind) || [kind, kind])[1];

// A scoped key (an educator's) sees its scope named and may narrow to one of its values; a tenant-wide
// reader may narrow to a district, school, class, batch or course; an admin of every tenant picks a tenant.
function setUpPicker() {
  const kind = $("pick-kind");
  if (who.scope) {
    const values = who.scope.values;
    kind.replaceChildren(el("option", { value: "", text: `all of ${kindName(who.scope.kind)} ${values.join(", ")}` }),
      ...(values.length > 1 ? values.map((v) => el("option", { value: `${who.scope.kind}:${v}`,
        text: `${kindName(who.scope.kind)} ${v}` })) : []));
    kind.disabled = values.length < 2;
  } else {
    kind.disabled = false;
    kind.replaceChildren(el("option", { value: "", text: who.tenant ? "whole tenant" : "everything" }),
      ...SCOPE_KINDS.map(([k, name]) => el("option", { value: k, text: `one ${name}` })));
  }
  $("tenant-pick").hidden = who.tenant !== null;
  $("pick-value-box").hidden = true;
}

function pickedScope() {
  const kind = $("pick-kind").value;
  if (!kind) return null;
  if (who.scope) return kind; // kind:value of the key's own scope
  const value = $("pick-value").value.trim();
  return value ? `${kind}:${value}` : undefined; // undefined: a kind without a value
}

// What a tenant-wide reader may narrow to, read from the rollup the metrics are served from (one query,
// only when the picker is opened, never during the first view).
const pickerValues = new Map();
async function loadPickerValues() {
  const kind = $("pick-kind").value;
  const list = $("pick-values");
  list.replaceChildren();
  if (!kind || who.scope || !can("query_sql")) return;
  const tenant = $("pick-tenant").value || view.tenant;
  const key = `${tenant}|${kind}`;
  if (!pickerValues.has(key)) {
    const column = kind.startsWith("rollup.") ? `rollup_${kind.slice(7)}` : null;
    if (!column) { pickerValues.set(key, []); } else {
      try {
        const where = tenant ? "WHERE tenant = $tenant" : "";
        const rows = (await api("/v1/query", { method: "POST", query: true, json: {
          sql: `SELECT DISTINCT ${column} AS v FROM learner_hours ${where} ORDER BY v LIMIT 500`,
          params: tenant ? { tenant } : {} } })).result;
        pickerValues.set(key, rows.map((r) => r.v).filter((v) => v));
      } catch { pickerValues.set(key, []); }
    }
  }
  list.replaceChildren(...pickerValues.get(key).map((v) => el("option", { value: v })));
}

async function loadTenants() {
  if (who.tenant !== null || !can("query_sql") || $("pick-tenant").options.length > 1) return;
  try {
    const rows = (await api("/v1/query", { method: "POST", query: true, json: {
      sql: "SELECT DISTINCT tenant FROM learner_hours ORDER BY tenant LIMIT 500" } })).result;
    $("pick-tenant").append(...rows.map((r) => el("option", { value: r.tenant, text: r.tenant })));
  } catch { /* the tenant can still be left at "all tenants" */ }
}

function showRangeControls() {
  $("range-preset").value = range.days ? String(range.days) : "custom";
  for (const box of document.querySelectorAll(".custom-range")) box.hidden = range.days !== null;
  $("range-from").value = range.from;
  $("range-to").value = isoDay(Date.parse(range.to) - DAY_MS);
  $("range-granularity").value = range.granularity;
}

function presetRange(days, granularity = "day") {
  const end = dataEnd || isoDay(Date.now() + DAY_MS);
  return { from: isoDay(Date.parse(end) - days * DAY_MS), to: end, granularity, days };
}

const RANGE_KEY = () => `cohort.range.${who.subject}`;

// The newest day with data ends the presets: the metric API answers by event time, and data may lie in the
// past (the demo's world ends months ago). Found once with the first metric by day over 400 days, and kept
// for this tab, so a reload or a second sign-in goes straight to the figures.
async function findDataEnd() {
  const kept = sessionStorage.getItem(RANGE_KEY());
  if (kept) return kept;
  const now = Date.now();
  const probe = catalog.metrics.find((m) => m.granularities.includes("day"));
  let end = isoDay(now + DAY_MS);
  if (probe) {
    const answer = await api(`/v1/metrics/${encodeURIComponent(probe.name)}?` + new URLSearchParams(
      { from: isoDay(now - 399 * DAY_MS), to: isoDay(now + DAY_MS), granularity: "day" }), { query: true, urgent: true });
    const days = answer.result.series.filter((c) => c.value !== null || c.suppressed).map((c) => Date.parse(c.bucket));
    if (days.length) end = isoDay(Math.max(...days) + DAY_MS);
  }
  sessionStorage.setItem(RANGE_KEY(), end);
  return end;
}

// ---- educator view ---------------------------------------------------------------------------------------

async function loadEducator() {
  const status = $("educator-status");
  status.textContent = "Loading…";
  const mine = ++generation;
  try {
    if (!dataEnd) dataEnd = await findDataEnd();
    if (mine !== generation) return;
    if (!range) range = presetRange(30);
    showRangeControls();
    const where = [view.tenant ? `tenant ${view.tenant}` : null, view.scope ? view.scope : null].filter(Boolean);
    status.textContent = `${catalog.metrics.length} figures and ${catalog.reports.length} reports, ${range.from} to ` +
      `${isoDay(Date.parse(range.to) - DAY_MS)}, by ${range.granularity}` + (where.length ? `, ${where.join(", ")}` : "");
    drawFigures(mine);
  } catch (error) {
    status.textContent = "";
    showError($("figures"), error);
    firstView();
  }
}

// Each figure is a card at once (its heading, then its data as it comes): the cards in view are asked for
// first, then the rest one after another, so the first chart does not wait for the ones below the fold.
const observer = new IntersectionObserver((entries) => {
  for (const entry of entries) if (entry.isIntersecting) load(entry.target, true);
}, { rootMargin: "100px" });
let pending = [];

function drawFigures(mine) {
  for (const chart of charts.splice(0)) chart.destroy();
  observer.disconnect();
  delete document.body.dataset.ready;
  const cards = [...catalog.metrics.map((m) => seriesCard(m)), ...catalog.reports.map((r) => reportCard(r))];
  $("figures").replaceChildren(...cards.filter((c) => c.dataset.kind === "series"));
  $("reports").replaceChildren(...cards.filter((c) => c.dataset.kind === "report"));
  $("reports-title").hidden = !catalog.reports.length;
  pending = cards;
  for (const card of cards) { card.dataset.generation = String(mine); observer.observe(card); }
  setTimeout(() => { for (const card of cards) load(card, false); }, 0); // after those in view
  if (!cards.length) { firstView(); document.body.dataset.ready = "1"; }
}

function load(card, urgent) {
  if (card.dataset.state) return;
  card.dataset.state = "loading";
  observer.unobserve(card);
  const mine = Number(card.dataset.generation);
  const entry = card.dataset.kind === "series" ? catalog.metrics.find((m) => m.name === card.dataset.metric)
    : catalog.reports.find((r) => r.name === card.dataset.metric);
  const params = figureParams(entry);
  api(`/v1/metrics/${encodeURIComponent(entry.name)}?${params}`, { query: true, urgent,
    stale: () => mine !== generation }).then(
    (body) => ({ answer: body.result }), (error) => ({ error })).then(({ answer, error }) => {
    if (mine !== generation) return;
    if (card.dataset.kind === "series") fillSeries(card, entry, answer, error);
    else fillReport(card, entry, answer, error);
    card.dataset.state = "done";
    if (!error && (card.dataset.kind === "report" || answer.series.length)) firstView();
    if (pending.every((c) => c.dataset.state === "done")) { firstView(); document.body.dataset.ready = "1"; }
  });
}

function granularityFor(metric) {
  return metric.granularities.includes(range.granularity) ? range.granularity : metric.granularities[0];
}

function figureParams(entry) {
  const params = new URLSearchParams({ from: range.from, to: range.to });
  if (entry.kind !== "report") params.set("granularity", granularityFor(entry));
  if (view.tenant) params.set("tenant", view.tenant);
  if (view.scope) params.set("scope", view.scope);
  return params;
}

function cellText(cell, k) {
  return cell.suppressed ? `suppressed (fewer than ${k} learners)` : String(cell.value);
}

function cardShell(entry, kind, description) {
  const id = `fig-${entry.name}`;
  return el("article", { class: kind === "series" ? "figure" : "figure report", id, "data-metric": entry.name,
    "data-kind": kind, "aria-labelledby": `${id}-title`, "aria-busy": "true" },
  el("h3", { id: `${id}-title`, text: words(entry.name) }),
  el("p", { class: "desc", text: description }),
  el("p", { class: "loading", text: "Loading…" }));
}

const seriesCard = (metric) => cardShell(metric, "series", `${metric.description} (${metric.unit})`);
const reportCard = (report) => cardShell(report, "report", report.description);

function freshnessLine(answer, suppressedText) {
  const fresh = answer.freshness.as_of ? `data received up to ${answer.freshness.as_of.replace("T", " ").slice(0, 19)} UTC`
    : "no data yet";
  const complete = answer.completeness.window_closed ? "window closed: figures final"
    : `window open: ${answer.completeness.note || "figures may still change"}`;
  return el("p", { class: "meta" },
    el("span", { class: "freshness", text: fresh }), " · ",
    el("span", { class: "completeness", text: complete }),
    suppressedText ? el("span", { class: "suppression", text: ` · ${suppressedText}` }) : null);
}

function actions(entry, onCsv, withEvents) {
  return el("div", { class: "actions" },
    el("button", { type: "button", class: "lineage", onclick: () => openLineage(entry), text: "Lineage",
      "aria-label": `Lineage of ${words(entry.name)}` }),
    el("button", { type: "button", class: "csv", onclick: onCsv, text: "CSV",
      "aria-label": `Download ${words(entry.name)} as CSV` }),
    withEvents && can("export") ? el("button", { type: "button", class: "events", onclick: (e) => exportEvents(entry, e.target),
      text: "Events (Parquet)", "aria-label": `Export the events behind ${words(entry.name)} as Parquet` }) : null);
}

function fillSeries(card, metric, answer, error) {
  card.querySelector(".loading").remove();
  card.removeAttribute("aria-busy");
  if (error) {
    card.append(el("p", { class: "error", role: "alert", text: error.message }));
    return;
  }
  const series = answer.series;
  const k = answer.suppression.k;
  const suppressed = answer.suppression.suppressed_cells;
  card.append(
    freshnessLine(answer, suppressed ? `${suppressed} cells suppressed (k=${k})` : null),
    el("p", { class: "summary", text: series.length ? summary(series, answer.granularity, metric.unit)
      : "No events in this range and scope." }),
    el("div", { class: "chart", id: `fig-${metric.name}-chart`, role: "img",
      "aria-label": `${words(metric.name)} by ${answer.granularity}: ${series.length} points; the table below has the values` }),
    el("details", { class: "alt" }, el("summary", { text: "Table of values" }),
      table(["bucket", "value"], series.map((c) => [c.bucket.slice(0, 10), cellText(c, k)]), `${metric.name} by ${answer.granularity}`)),
    actions(metric, () => downloadSeriesCsv(metric, answer), true));
  drawChart(metric, answer);
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
  const width = Math.max(240, Math.min(target.clientWidth || 560, 900));
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

function downloadSeriesCsv(metric, answer) {
  const lines = ["bucket,group,value,suppressed"];
  for (const c of answer.series) lines.push([c.bucket, c.group, c.value, c.suppressed].map(csvCell).join(","));
  download(`${metric.name}_${answer.from.slice(0, 10)}_${answer.to.slice(0, 10)}_${answer.granularity}.csv`,
    new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
}

// A report is drawn as a table of the columns it declares, whatever report it is, so a report the server
// adds appears without a change here. A learner column (a pseudonym) gets a Reveal button for roles that
// may re-identify their own learners; lists and records (reasons, stalled courses) are written out as text.
function fillReport(card, report, answer, error) {
  card.querySelector(".loading").remove();
  card.removeAttribute("aria-busy");
  if (error) {
    const text = error.code === "ERR_AUTH_FORBIDDEN" ? `Not for your role: ${error.message}` : error.message;
    card.append(el("p", { class: error.code === "ERR_AUTH_FORBIDDEN" ? "empty" : "error", role: "alert", text }));
    return;
  }
  const columns = answer.columns.map((c) => c.name);
  const withheld = answer.suppression.suppressed_rows;
  const learnerAt = answer.columns.findIndex((c) => c.name === "learner" && c.unit === "id");
  const reveal = learnerAt >= 0 && can("read_learners");
  card.append(freshnessLine(answer, withheld ? `${withheld} rows withheld (fewer than ${answer.suppression.k} learners)`
    : null));
  if (!answer.rows.length) {
    card.append(el("p", { class: "summary", text: "No rows in this range and scope." }));
  } else {
    card.append(el("p", { class: "summary", text: `${answer.rows.length} rows` }),
      table((reveal ? [...columns, "identity"] : columns).map(words), answer.rows.map((row) => {
        const cells = row.map((value, i) => reportText(value, answer.columns[i]));
        if (reveal) cells.push(revealCell(row[learnerAt], answer.tenant));
        return cells;
      }), `${words(report.name)}, ${answer.from.slice(0, 10)} to ${answer.to.slice(0, 10)}`));
  }
  card.append(actions(report, () => downloadReportCsv(report, answer), false));
}

function reportText(value, column) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.map((v) => reportText(v, column)).join("; ");
  if (typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${words(k)} ${reportText(v, column)}`).join(", ");
  }
  if (column && column.unit === "percent" && typeof value === "number") return `${round(value)} %`;
  return String(value);
}

function revealCell(pseudonym, tenant) {
  const cell = el("span", { class: "identity" });
  if (typeof pseudonym !== "string" || !LEARNER.test(pseudonym)) return cell;
  const button = el("button", { type: "button", class: "reveal", text: "Reveal", "aria-label": `Reveal ${pseudonym}`,
    onclick: () => revealLearner(pseudonym, tenant, cell, button) });
  cell.append(button);
  return cell;
}

async function revealLearner(pseudonym, tenant, cell, button) {
  button.disabled = true;
  try {
    const body = (await api("/v1/learners/reidentify", { method: "POST", query: true,
      json: who.tenant ? { pseudonyms: [pseudonym] } : { pseudonyms: [pseudonym], tenant } })).result;
    const learner = (body.learners || []).find((l) => l.pseudonym === pseudonym) || body.learners?.[0];
    cell.replaceChildren(el("span", { class: "revealed", text: learner ? learner.id
      : `withheld: ${body.withheld?.[0]?.reason || "not held"}` }));
  } catch (error) {
    cell.replaceChildren(el("span", { class: "error", text: error.message }));
  }
}

function downloadReportCsv(report, answer) {
  const lines = [answer.columns.map((c) => csvCell(c.name)).join(",")];
  for (const row of answer.rows) lines.push(row.map(csvCell).join(","));
  download(`${report.name}_${answer.from.slice(0, 10)}_${answer.to.slice(0, 10)}.csv`,
    new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
}

async function exportEvents(metric, button) {
  const dataset = (metric.sources || []).find((s) => s === "telemetry") || "telemetry";
  const note = button.parentElement.querySelector(".export-note") || button.parentElement.appendChild(
    el("span", { class: "export-note", role: "status" }));
  note.textContent = "Exporting…";
  try {
    const params = new URLSearchParams({ from: range.from, to: range.to, format: "parquet" });
    if (view.tenant) params.set("tenant", view.tenant);
    if (view.scope) params.set("scope", view.scope);  // the events of the figure's scope, as the chart shows
    const response = await api(`/v1/exhaust/${dataset}?${params}`, { raw: true });
    download(`${dataset}_${range.from}_${range.to}.parquet`, await response.blob());
    note.textContent = view.scope ? `The export holds the events of ${view.scope}.` : "";
  } catch (error) {
    note.textContent = error.status === 404 || error.status === 405 ? "Event export is not available on this server."
      : error.message;
  }
}

async function openLineage(entry) {
  const dialog = $("lineage-dialog");
  const body = $("lineage-body");
  $("lineage-title").textContent = `Lineage of ${words(entry.name)}`;
  body.replaceChildren(el("p", { text: "Loading…" }));
  dialog.showModal();
  try {
    const l = (await api(`/v1/lineage/metric/${encodeURIComponent(entry.name)}?${figureParams(entry)}`,
      { query: true, urgent: true })).result;
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
      l.suppression ? el("p", { text: `Suppression: ${l.suppression.rule}` }) : null);
  } catch (error) {
    showError(body, error);
  }
  $("lineage-close").focus();
}

// ---- administrator view ----------------------------------------------------------------------------------

// Loaded when first shown (not during the educator's first view), then the ledger follows every 5 s while
// the view is on screen.
function loadAdmin() {
  if ($("admin").dataset.loaded) return;
  $("admin").dataset.loaded = "1";
  loadLedger();
  loadFailed();
  if (can("manage_keys")) loadKeys(); else $("keys").replaceChildren(el("p", { class: "empty", text: "Your role does not manage keys." }));
  loadAudit();
  loadTables();
  timers.push(setInterval(() => { if (!$("admin").hidden && who) loadLedger(); }, 5000));
}

let lastLedger = null;
const rate = (now, before, field) => (now[field] - before[field]) / Math.max(0.001, (now.at_ms - before.at_ms) / 1000);

async function loadLedger() {
  const target = $("health");
  if (!who) return; // signed out since this reading was planned
  try {
    const l = (await api("/v1/ledger")).result;
    const before = lastLedger;
    lastLedger = l;
    const sum = l.stored + l.quarantined + l.duplicates + l.in_flight;
    $("ledger-check").replaceChildren(el("span", { class: l.holds ? "ok" : "error", text:
      `received ${l.received} = stored ${l.stored} + quarantined ${l.quarantined} + duplicates ${l.duplicates} + ` +
      `in flight ${l.in_flight} (${sum}): ${l.holds ? "reconciled" : `${l.unaccounted} unaccounted`}` }));
    const p = l.pipeline;
    const rows = [
      ["status", p.stalled ? "stalled" : p.degraded ? "degraded" : "ok"],
      ["events received", l.received], ["events stored", l.stored], ["events failed", l.quarantined],
      ["events duplicate", l.duplicates], ["events in flight", l.in_flight],
      ["unaccounted (always 0)", l.unaccounted],
      ["events/s received", before ? round(rate(l, before, "received")) : "measuring…"],
      ["events/s stored", before ? round(rate(l, before, "stored")) : "measuring…"],
      ["lag (oldest unprocessed, s)", p.lag_seconds], ["backlog (events)", p.backlog_events],
      ["quarantined by stage", Object.entries(l.quarantined_by_stage).map(([s, n]) => `${s} ${n}`).join(", ") || "none"],
      ["duplicate requests (retries)", l.duplicate_requests], ["last error", p.last_error || "none"]];
    target.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }),
      el("dd", { "data-key": k, text: v === undefined || v === null ? "n/a" : String(v) })]));
    if (!before) setTimeout(loadLedger, 2000); // a second reading gives the rates
  } catch (error) { showError(target, error); }
}

async function loadFailed() {
  const target = $("failed");
  if (!can("query_sql")) { target.replaceChildren(el("p", { class: "empty", text: "Your role does not read the quarantine." })); return; }
  try {
    const rows = (await api("/v1/query", { method: "POST", query: true, json: { sql:
      "SELECT error_code, stage, count(*) AS events, min(message) AS example, min(mid) AS example_mid " +
      "FROM failed_events GROUP BY error_code, stage ORDER BY events DESC, error_code" } })).result;
    if (!rows.length) { target.replaceChildren(el("p", { class: "empty", text: "No failed events." })); return; }
    target.replaceChildren(table(["code", "stage", "events", "example", "example event", ""], rows.map((r) => [
      r.error_code, r.stage, r.events, r.example, r.example_mid,
      el("button", { type: "button", class: "drill", "data-code": r.error_code, text: "Show events",
        "aria-label": `Show quarantined events with code ${r.error_code}`, onclick: () => drillFailed(r.error_code) })]),
    "failed events by code"));
  } catch (error) { showError(target, error); }
}

async function drillFailed(code) {
  const target = $("failed-rows");
  try {
    const answer = await api("/v1/query", { method: "POST", query: true, json: {
      sql: "SELECT * FROM failed_events WHERE error_code = $code ORDER BY failed_at DESC LIMIT 50", params: { code } } });
    const rows = answer.result;
    const columns = answer.meta?.columns?.map((c) => c.name || c) || Object.keys(rows[0] || {});
    target.replaceChildren(el("h4", { text: `Quarantined events with code ${code} (${rows.length} shown)` }),
      table(columns, rows.map((r) => columns.map((c) => r[c])), `quarantined events ${code}`));
    target.querySelector(".table-wrap").focus();
  } catch (error) { showError(target, error); }
}

async function loadKeys() {
  const target = $("keys");
  try {
    const keys = (await api("/v1/keys")).result.keys;
    target.replaceChildren(table(["key id", "tenant", "role", "scope", "state", "expires", "created", "label"],
      keys.map((k) => [k.key_id, k.tenant || "(all)", k.role, k.scope || "", k.state, k.expires_at || "never",
        k.created_at.slice(0, 16), k.label]), `${keys.length} API keys (ids only; secrets are never shown)`));
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
  if (!can("read_tables")) return;
  try {
    const tables = (await api("/v1/tables")).result.tables;
    target.replaceChildren(table(["dataset", "description", "rows", "columns"], tables.map((t) =>
      [t.name, t.description, t.rows, t.columns.length]), "datasets you may query"));
  } catch (error) { showError(target, error); }
}

// ---- wiring ----------------------------------------------------------------------------------------------

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  started = performance.now();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  signIn();
});
$("sign-out").addEventListener("click", signOut);
$("tab-educator").addEventListener("click", () => showView("educator"));
$("tab-admin").addEventListener("click", () => showView("admin"));
$("lineage-close").addEventListener("click", () => $("lineage-dialog").close());
$("pick-kind").addEventListener("change", () => {
  $("pick-value-box").hidden = !$("pick-kind").value || Boolean(who.scope);
  $("pick-value").required = !$("pick-value-box").hidden;
  $("pick-value").value = "";
  loadPickerValues();
});
$("pick-tenant").addEventListener("focus", loadTenants);
$("pick-tenant").addEventListener("change", () => { pickerValues.clear(); loadPickerValues(); });
$("range-preset").addEventListener("change", () => {
  for (const box of document.querySelectorAll(".custom-range")) box.hidden = $("range-preset").value !== "custom";
});
$("range-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const preset = $("range-preset").value;
  const granularity = $("range-granularity").value;
  if (preset === "custom") {
    const from = $("range-from").value;
    const toInclusive = $("range-to").value;
    if (!from || !toInclusive || from > toInclusive) {
      $("educator-status").textContent = "Choose a start date on or before the end date.";
      return;
    }
    range = { from, to: isoDay(Date.parse(toInclusive) + DAY_MS), granularity, days: null };
  } else {
    range = presetRange(Number(preset), granularity);
  }
  const scope = pickedScope();
  if (scope === undefined) {
    $("educator-status").textContent = `Name the ${kindName($("pick-kind").value)} to show, or choose the whole scope.`;
    return;
  }
  view = { tenant: who.tenant === null ? $("pick-tenant").value || null : null, scope };
  await loadEducator();
});
$("health-refresh").addEventListener("click", loadLedger);
$("audit-refresh").addEventListener("click", loadAudit);
$("event-lineage-form").addEventListener("submit", lookUpEvent);
if (sessionStorage.getItem(KEY)) signIn();
