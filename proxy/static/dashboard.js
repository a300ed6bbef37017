// tiergate live spend dashboard. No dependencies, nothing loaded from outside the proxy.
//
// Money arrives as exact decimal strings from the finance API (/v1/spend/report, /v1/spend/teams). It is shown
// from those strings; anything derived (cost per 1k requests, shares) is computed in integer nano-dollars with
// BigInt, never by adding floats. Each money element keeps the exact string in data-usd and its tooltip.
"use strict";

const KEY_STORE = "tiergate.dashboard.key";
const REFRESH_MS = 4000;
const NANOS = 1000000000n;
const TIER_COLOURS = ["#20c997", "#4c6ef5", "#f59f00", "#e64980", "#7950f2", "#868e96"];

const state = { period: "month", busy: false, refreshes: 0, timer: null, tierColours: new Map() };

class AuthError extends Error {}

// ---- money ----------------------------------------------------------------------------------------------------
function nanos(text) {
  const s = String(text).trim();
  const neg = s.startsWith("-");
  const [whole, frac = ""] = s.replace(/^[-+]/, "").split(".");
  const value = BigInt(whole || "0") * NANOS + BigInt((frac + "000000000").slice(0, 9));
  return neg ? -value : value;
}

function usdText(n) {
  const neg = n < 0n;
  const abs = neg ? -n : n;
  const decimals = abs >= NANOS ? 2 : abs >= 10000000n ? 4 : 6;
  const unit = 10n ** BigInt(9 - decimals);
  const scaled = (abs + unit / 2n) / unit;
  const base = 10n ** BigInt(decimals);
  const whole = (scaled / base).toLocaleString("en-US");
  const frac = (scaled % base).toString().padStart(decimals, "0");
  return `${neg ? "-" : ""}$${whole}.${frac}`;
}

function decimalOf(n) {
  const neg = n < 0n;
  const abs = neg ? -n : n;
  return `${neg ? "-" : ""}${abs / NANOS}.${(abs % NANOS).toString().padStart(9, "0")}`;
}

function money(el, exact) {
  el.textContent = usdText(nanos(exact));
  el.dataset.usd = exact;
  el.title = `$${exact}`;
  return el;
}

function pct(part, whole) {
  if (whole <= 0n) return 0;
  return Number((part * 100000n) / whole) / 1000;
}

// ---- DOM helpers --------------------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") el.className = v;
    else if (k === "testid") el.dataset.testid = v;
    else if (k === "usd") money(el, v);
    else el[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c);
  return el;
}

function empty(text = "No requests in this period yet") {
  return h("div", { class: "empty" }, text);
}

function table(headers, rows) {
  const head = h("tr", {}, ...headers.map(([label, num]) => h("th", { class: num ? "num" : "" }, label)));
  return h("table", {}, h("thead", {}, head), h("tbody", {}, ...rows));
}

function cell(content, num = false) {
  return h("td", { class: num ? "num" : "" }, content);
}

// ---- API ----------------------------------------------------------------------------------------------------
async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY_STORE)}` } });
  if (response.status === 401 || response.status === 403) {
    let message = `the key was refused (${response.status})`;
    try { message = (await response.json()).error.message; } catch (_) { /* keep the generic message */ }
    throw new AuthError(message);
  }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// ---- panels -------------------------------------------------------------------------------------------------
function renderKpis(day, month, period) {
  money($("day-spend"), day.totals.cost_usd);
  $("day-requests").textContent = day.totals.requests.toLocaleString("en-US");
  money($("month-spend"), month.totals.cost_usd);
  $("month-requests").textContent = month.totals.requests.toLocaleString("en-US");
  const chosen = period === "day" ? day : month;
  money($("savings"), chosen.totals.savings_usd);
  money($("baseline"), chosen.totals.counterfactual_cost_usd);
  $("saved-pct").textContent = `${pct(nanos(chosen.totals.savings_usd), nanos(chosen.totals.counterfactual_cost_usd)).toFixed(1)}%`;
  for (const [id, report] of [["per1k-month", month], ["per1k-day", day]]) {
    const requests = BigInt(report.totals.requests);
    const per1k = requests > 0n ? (nanos(report.totals.cost_usd) * 1000n + requests / 2n) / requests : 0n;
    money($(id), decimalOf(per1k));
  }
}

function burn(label, spentText, capText, testid) {
  const row = h("div", { class: "burn" }, h("span", { class: "label" }, label));
  if (capText === null) {
    row.append(h("div", { class: "nocap" }, "no cap"), h("span", { class: "amount", usd: spentText, testid }));
    return row;
  }
  const share = pct(nanos(spentText), nanos(capText));
  const fill = h("div", { class: `fill${share >= 100 ? " over" : share >= 80 ? " warn" : ""}` });
  fill.style.width = `${Math.min(share, 100)}%`;
  const track = h("div", { class: "track", title: `${share.toFixed(2)}% of the cap` }, fill, h("div", { class: "mark" }));
  const amount = h("span", { class: "amount" }, h("span", { usd: spentText, testid }), ` of ${usdText(nanos(capText))} · `,
    h("b", {}, `${share < 10 ? share.toFixed(2) : share.toFixed(0)}%`));
  row.append(track, amount);
  return row;
}

function renderBudgets(teams) {
  const rows = teams.teams.map((t) => h("div", { class: "budget" }, h("div", { class: "team" }, t.team),
    burn("today", t.day_usd, t.daily_budget_usd, `team-day-${t.team}`),
    burn("month", t.month_usd, t.monthly_budget_usd, `team-month-${t.team}`)));
  $("budgets").replaceChildren(...(rows.length ? rows : [empty("No teams")]));
}

function niceMax(value) {
  if (value <= 0) return 1e-6;
  const p = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= value) return m * p;
  return 10 * p;
}

function axisUsd(value, step) {
  const digits = Math.min(6, Math.max(0, 1 - Math.floor(Math.log10(step))));
  return `$${value.toFixed(digits)}`;
}

function renderChart(points, hint) {
  // points: [{label, tip, cost (exact string)}]
  $("chart-hint").textContent = hint;
  const W = 640, H = 190, L = 62, R = 8, T = 10, B = 22;
  const values = points.map((p) => Number(nanos(p.cost)) / 1e9);
  const max = niceMax(Math.max(...values, 0));
  const plotW = W - L - R, plotH = H - T - B;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  for (let i = 0; i <= 4; i++) {
    const y = T + plotH - (plotH * i) / 4;
    root.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid-line" }));
    const label = svg("text", { x: L - 6, y: y + 3, "text-anchor": "end", class: "axis" });
    label.textContent = axisUsd((max * i) / 4, max / 4);
    root.append(label);
  }
  const step = plotW / Math.max(points.length, 1);
  const every = Math.ceil(points.length / 12);
  points.forEach((p, i) => {
    const height = (values[i] / max) * plotH;
    const rect = svg("rect", { x: L + i * step + step * 0.15, y: T + plotH - height, width: step * 0.7,
      height: Math.max(height, values[i] > 0 ? 1 : 0), class: "bar-rect", rx: 2 });
    const title = svg("title");
    title.textContent = `${p.tip}: $${p.cost} · ${p.requests} requests`;
    rect.append(title);
    root.append(rect);
    if (i % every === 0) {
      const label = svg("text", { x: L + i * step + step / 2, y: H - 6, "text-anchor": "middle", class: "axis" });
      label.textContent = p.label;
      root.append(label);
    }
  });
  $("chart").replaceChildren(root);
}

function dayPoints(report, monthStart, today) {
  const byDay = new Map(report.rows.map((r) => [r.day, r]));
  const points = [];
  for (let d = new Date(`${monthStart}T00:00:00Z`); d.toISOString().slice(0, 10) <= today; d.setUTCDate(d.getUTCDate() + 1)) {
    const key = d.toISOString().slice(0, 10);
    const row = byDay.get(key);
    points.push({ label: key.slice(8), tip: key, cost: row ? row.cost_usd : "0.000000000", requests: row ? row.requests : 0 });
  }
  return points;
}

function renderTiers(report) {
  const rows = [...report.rows].sort((a, b) => {
    const ca = nanos(a.cost_usd) * BigInt(b.requests || 1), cb = nanos(b.cost_usd) * BigInt(a.requests || 1);
    return ca < cb ? -1 : ca > cb ? 1 : 0;
  });
  if (!rows.length) return $("tiers").replaceChildren(empty());
  const total = BigInt(report.totals.requests);
  const bar = h("div", { class: "mix" });
  for (const r of rows) {  // a tier keeps its colour across refreshes and periods
    if (!state.tierColours.has(r.tier)) state.tierColours.set(r.tier, TIER_COLOURS[state.tierColours.size % TIER_COLOURS.length]);
  }
  const body = rows.map((r) => {
    const colour = state.tierColours.get(r.tier);
    const seg = h("span", { title: `${r.tier}: ${r.requests} requests` });
    seg.style.width = `${pct(BigInt(r.requests), total)}%`;
    seg.style.background = colour;
    bar.append(seg);
    const swatch = h("span", { class: "swatch" });
    swatch.style.background = colour;
    return h("tr", { }, cell(h("span", {}, swatch, r.tier || "(none)")), cell(r.requests.toLocaleString("en-US"), true),
      cell(`${pct(BigInt(r.requests), total).toFixed(1)}%`, true), cell(h("span", { usd: r.cost_usd }), true),
      cell(h("span", { usd: r.savings_usd }), true));
  });
  $("tiers").replaceChildren(bar, table([["tier"], ["requests", 1], ["share", 1], ["spend", 1], ["saved", 1]], body));
}

function renderRanking(target, rows, nameOf, testPrefix) {
  const sorted = [...rows].sort((a, b) => {
    const x = nanos(a.cost_usd), y = nanos(b.cost_usd);
    return x > y ? -1 : x < y ? 1 : 0;
  }).slice(0, 6);
  if (!sorted.length) return $(target).replaceChildren(empty());
  const top = nanos(sorted[0].cost_usd);
  $(target).replaceChildren(...sorted.map((r) => {
    const fill = h("div", { class: "fill" });
    fill.style.width = `${top > 0n ? pct(nanos(r.cost_usd), top) : 0}%`;
    return h("div", { class: "rank" }, h("span", { class: "name", title: nameOf(r) }, nameOf(r),
      h("span", { class: "muted" }, ` · ${r.requests.toLocaleString("en-US")} req`)),
      h("span", { class: "amount", usd: r.cost_usd, testid: `${testPrefix}-${nameOf(r)}` }),
      h("div", { class: "track" }, fill));
  }));
}

function renderPercentiles(data) {
  const rows = [...data.rows].sort((a, b) => b.p95_output_tokens - a.p95_output_tokens);
  if (!rows.length) {
    $("p95-top").textContent = "–";
    $("p95-top-label").textContent = "no successful requests";
    return $("percentiles").replaceChildren(empty());
  }
  $("p95-top").textContent = rows[0].p95_output_tokens.toLocaleString("en-US");
  $("p95-top-label").textContent = `highest: ${rows[0].team} · ${rows[0].model}`;
  $("percentiles").replaceChildren(table([["team"], ["model"], ["requests", 1], ["P50", 1], ["P95", 1]],
    rows.slice(0, 8).map((r) => h("tr", {}, cell(r.team), cell(r.model || "(none)"), cell(r.requests.toLocaleString("en-US"), true),
      cell(r.p50_output_tokens.toLocaleString("en-US"), true), cell(h("b", {}, r.p95_output_tokens.toLocaleString("en-US")), true)))));
}

function renderRequests(data) {
  if (!data.requests.length) return $("requests").replaceChildren(empty("No requests in the last 24 hours"));
  $("requests").replaceChildren(table(
    [["time (UTC)"], ["team"], ["key"], ["model"], ["tier"], ["tokens in/out", 1], ["cost", 1]],
    data.requests.slice(0, 8).map((r) => h("tr", { title: r.request_id }, cell(r.started_at.slice(11, 19)), cell(r.team),
      cell(r.key_id), cell(r.model || `(${r.status})`), cell(h("span", { class: "pill" }, r.tier || "–")),
      cell(`${r.prompt_tokens.toLocaleString("en-US")} / ${r.completion_tokens.toLocaleString("en-US")}`, true),
      cell(h("b", { usd: r.cost_usd }), true)))));
}

// ---- refresh loop -------------------------------------------------------------------------------------------
async function refresh() {
  if (state.busy || !sessionStorage.getItem(KEY_STORE)) return;
  state.busy = true;
  try {
    const [teams, month] = await Promise.all([api("/v1/spend/teams"), api("/v1/spend/report?group_by=team")]);
    const today = teams.day;
    // UTC days, end exclusive: the default report (month) already ends tomorrow
    const dayRange = `start=${today}&end=${month.end}`;
    const range = state.period === "day" ? dayRange : `start=${month.start}&end=${month.end}`;
    const [day, tiers, keys, tags, percentiles, requests, series] = await Promise.all([
      api(`/v1/spend/report?${dayRange}&group_by=team`),
      api(`/v1/spend/report?${range}&group_by=tier`),
      api(`/v1/spend/report?${range}&group_by=key`),
      api(`/v1/spend/report?${range}&group_by=tag`),
      api(`/v1/spend/percentiles?${range}`),
      api("/v1/spend/requests?limit=8&order=cost&hours=24"),
      state.period === "day" ? api(`/v1/spend/timeseries?bucket=hour&day=${today}`)
        : api(`/v1/spend/report?${range}&group_by=day`),
    ]);
    $("scope").textContent = month.team === null ? "All teams · admin" : `Team ${month.team}`;
    renderKpis(day, month, state.period);
    renderBudgets(teams);
    if (state.period === "day") {
      renderChart(series.points.map((p) => ({ label: p.hour.slice(11, 13), tip: `${p.hour.slice(11, 16)} UTC`,
        cost: p.cost_usd, requests: p.requests })), `today, per hour (UTC) · ${today}`);
    } else {
      renderChart(dayPoints(series, month.start, today), `this month, per day · ${month.start} – ${today}`);
    }
    renderTiers(tiers);
    renderRanking("keys", keys.rows, (r) => r.key_id, "key");
    renderRanking("tags", tags.rows, (r) => r.tag_value !== null ? `${r.tag_key}=${r.tag_value}`
      : r.tag_key !== null ? `${r.tag_key}: (untagged)` : "(no tags)", "tag");
    renderPercentiles(percentiles);
    renderRequests(requests);
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
    $("updated").textContent = `Updated ${new Date().toISOString().slice(11, 19)} UTC`;
    $("dot").className = "dot ok";
  } catch (error) {
    if (error instanceof AuthError) return showLogin(error.message);
    $("dot").className = "dot err";
    $("updated").textContent = `Update failed: ${error.message}`;
  } finally {
    state.busy = false;
  }
}

function showLogin(message = "") {
  sessionStorage.removeItem(KEY_STORE);
  clearInterval(state.timer);
  $("main").hidden = true;
  $("controls").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("scope").textContent = "";
  $("key").focus();
}

function start() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("controls").hidden = false;
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  refresh();
}

function setPeriod(period) {
  state.period = period;
  for (const b of document.querySelectorAll(".period button")) b.classList.toggle("on", b.dataset.period === period);
  for (const el of document.querySelectorAll(".pname")) el.textContent = period === "day" ? "today" : "this month";
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value.trim());
    $("key").value = "";
    start();
  });
  $("change-key").addEventListener("click", () => showLogin());
  for (const b of document.querySelectorAll(".period button")) b.addEventListener("click", () => setPeriod(b.dataset.period));
  for (const el of document.querySelectorAll(".pname")) el.textContent = "this month";
  if (sessionStorage.getItem(KEY_STORE)) start(); else showLogin();
});
