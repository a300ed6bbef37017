// tiergate live spend dashboard. No dependencies, nothing loaded from outside the proxy.
//
// Money arrives as exact decimal strings from the finance API (/v1/spend/*, /v1/alerts, /v1/routing/evidence). It is
// shown from those strings; anything derived (cost per 1k requests, shares, untagged share, a tier's shadow + judge)
// is computed in integer nano-dollars with BigInt, never by adding floats. Each money element keeps the API's string in data-usd and its tooltip.
// Every call carries the chosen date range (UTC days, start inclusive, end exclusive, as the API) and, for an
// admin key with a team chosen, team=.
"use strict";

const KEY_STORE = "tiergate.dashboard.key";
const REFRESH_MS = 4000;
const NANOS = 1000000000n;
const TIER_COLOURS = ["#20c997", "#4c6ef5", "#f59f00", "#e64980", "#7950f2", "#868e96"];
const SHOWN_CAPS = 6;  // key/tag blocks in the budget panel: the most used first

const state = {
  period: "month", custom: null, team: "", admin: null, today: null,
  busy: false, again: false, refreshes: 0, timer: null, tierColours: new Map(),
};

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

function dayText(iso) {
  return iso.slice(0, 10);
}

function addDays(iso, days) {
  const d = new Date(`${iso}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

function shareText(share) {
  return `${share.toFixed(share < 10 ? 2 : share < 100 ? 1 : 0)}%`;
}

function maxNanos(...values) {
  return values.reduce((a, b) => (b > a ? b : a), 0n);
}

// ---- API ----------------------------------------------------------------------------------------------------
function authHeaders() {
  return { Authorization: `Bearer ${sessionStorage.getItem(KEY_STORE)}` };
}

async function apiError(response, path) {
  let message = `${path.split("?")[0]}: HTTP ${response.status}`;
  try { message = `${message}: ${(await response.json()).error.message}`; } catch (_) { /* keep the status */ }
  return message;
}

async function api(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (response.status === 401 || response.status === 403) {
    let message = `the key was refused (${response.status})`;
    try { message = (await response.json()).error.message; } catch (_) { /* keep the generic message */ }
    throw new AuthError(message);
  }
  if (!response.ok) throw new Error(await apiError(response, path));
  return response.json();
}

function teamParam() {
  return state.team ? `&team=${encodeURIComponent(state.team)}` : "";
}

// The range the view shows: a preset relative to the server's UTC day, or the custom one.
function currentRange(today) {
  const tomorrow = addDays(today, 1);
  if (state.period === "day") return { start: today, end: tomorrow, label: "today" };
  if (state.period === "last7") return { start: addDays(today, -6), end: tomorrow, label: "last 7 days" };
  if (state.period === "custom" && state.custom) {
    return { ...state.custom, label: `${state.custom.start} → ${state.custom.end} (excl.)` };
  }
  return { start: `${today.slice(0, 8)}01`, end: tomorrow, label: "this month" };
}

// ---- panels -------------------------------------------------------------------------------------------------
function per1k(report) {
  const requests = BigInt(report.totals.requests);
  return decimalOf(requests > 0n ? (nanos(report.totals.cost_usd) * 1000n + requests / 2n) / requests : 0n);
}

function renderKpis(day, month, chosen, ceilings) {
  money($("range-spend"), chosen.totals.cost_usd);
  $("range-requests").textContent = chosen.totals.requests.toLocaleString("en-US");
  money($("day-spend"), day.totals.cost_usd);
  $("day-requests").textContent = day.totals.requests.toLocaleString("en-US");
  money($("month-spend"), month.totals.cost_usd);
  $("month-requests").textContent = month.totals.requests.toLocaleString("en-US");
  // The baseline is each team's own ceiling tier (what its usage would cost there), not one fixed tier.
  const tiers = [...new Set(chosen.rows.map((r) => ceilings.get(r.team)).filter(Boolean))];
  $("savings-label").textContent = tiers.length === 1 ? `Saved vs always-${tiers[0]}` : "Saved vs each team's ceiling";
  money($("savings"), chosen.totals.savings_usd);
  money($("baseline"), chosen.totals.counterfactual_cost_usd);
  $("saved-pct").textContent = `${pct(nanos(chosen.totals.savings_usd), nanos(chosen.totals.counterfactual_cost_usd)).toFixed(1)}%`;
  money($("per1k-range"), per1k(chosen));
  money($("per1k-month"), per1k(month));
  money($("per1k-day"), per1k(day));
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
    h("b", {}, shareText(share)));
  row.append(track, amount);
  return row;
}

function capBlock(title, sub, bars) {
  return h("div", { class: "budget" }, h("div", { class: "team", title }, title, sub ? h("div", { class: "muted" }, sub) : null),
    h("div", { class: "bars" }, ...bars));
}

function renderBudgets(teams, budgets, experiments) {
  const out = teams.teams.map((t) => capBlock(t.team, "team", [
    burn("today", t.day_usd, t.daily_budget_usd, `team-day-${t.team}`),
    burn("month", t.month_usd, t.monthly_budget_usd, `team-month-${t.team}`)]));
  for (const [scope, heading] of [["key", "Keys"], ["tag", "Tags"]]) {
    const blocks = new Map();
    for (const c of budgets.caps.filter((cap) => cap.scope === scope)) {
      const id = `${c.team}\u0000${c.name}`;
      if (!blocks.has(id)) blocks.set(id, { team: c.team, name: c.name, caps: [], top: 0n });
      const block = blocks.get(id);
      block.caps.push(c);
      const share = (nanos(c.spent_usd) * 1000000n) / (nanos(c.limit_usd) || 1n);
      if (share > block.top) block.top = share;
    }
    const sorted = [...blocks.values()].sort((a, b) => (b.top > a.top ? 1 : b.top < a.top ? -1 : 0));
    if (!sorted.length) continue;
    out.push(h("div", { class: "section" }, heading));
    for (const b of sorted.slice(0, SHOWN_CAPS)) {
      out.push(capBlock(b.name, `${scope} · ${b.team}`, b.caps.map((c) => burn(c.period === "day" ? "today" : "month",
        c.spent_usd, c.limit_usd, `cap-${scope}-${c.period}-${c.team}-${c.name}`))));
    }
    if (sorted.length > SHOWN_CAPS) out.push(h("div", { class: "more" }, `+${sorted.length - SHOWN_CAPS} more ${heading.toLowerCase()} under caps`));
  }
  if (experiments.experiments.length) {
    out.push(h("div", { class: "section" }, "Experiments"));
    for (const e of experiments.experiments) {
      out.push(capBlock(e.name, `experiment · ${e.team}`, [burn("life", e.spent_usd, e.budget_usd, `cap-experiment-${e.team}-${e.name}`)]));
    }
  }
  $("budgets").replaceChildren(...(out.length ? out : [empty("No teams")]));
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

function dayPoints(report, start, end) {
  const byDay = new Map(report.rows.map((r) => [dayText(r.day), r]));
  const points = [];
  for (let key = start; key < end; key = addDays(key, 1)) {
    const row = byDay.get(key);
    points.push({ label: key.slice(5), tip: key, cost: row ? row.cost_usd : "0.000000000", requests: row ? row.requests : 0 });
  }
  return points;
}

function runOut(b) {
  const cap = `${b.period === "month" ? "monthly" : "daily"} ${usdText(nanos(b.limit_usd))}`;
  return b.runs_out_on ? h("span", { class: "bad" }, `${cap}: runs out ${b.runs_out_on}`) : h("span", { class: "good" }, `${cap}: holds`);
}

function renderForecast(fc) {
  $("forecast-hint").textContent = `${fc.month_start} – ${fc.month_end} (excl.) · ${fc.interval} interval`;
  const t = fc.total;
  money($("forecast-total"), t.projected_usd);
  $("forecast-range").replaceChildren(h("span", { usd: t.low_usd }), " – ", h("span", { usd: t.high_usd }));
  money($("forecast-burn"), t.burn_rate_usd_per_day);
  if (!fc.rows.length) return $("forecast").replaceChildren(empty("No spend this month yet"));
  $("forecast").replaceChildren(...fc.rows.map((r) => {
    const monthly = r.budgets.find((b) => b.period === "month");
    const spent = nanos(r.spent_usd), low = nanos(r.low_usd), high = nanos(r.high_usd), proj = nanos(r.projected_usd);
    const cap = monthly ? nanos(monthly.limit_usd) : 0n;
    // A cap far above the projection would squeeze the bar to a sliver: it is then named, not drawn.
    const reach = maxNanos(spent, high, proj);
    const drawCap = monthly && cap <= reach * 4n;
    const scale = (drawCap ? maxNanos(reach, cap) : reach) || 1n;
    const at = (v) => `${pct(v, scale)}%`;
    const fill = h("div", { class: "fill" });
    fill.style.width = at(spent);
    const band = h("div", { class: "band", title: `80%: $${r.low_usd} – $${r.high_usd}` });
    band.style.left = at(low);
    band.style.width = `${pct(high - low, scale)}%`;
    const tick = h("div", { class: "tick", title: `projected $${r.projected_usd}` });
    tick.style.left = at(proj);
    const track = h("div", { class: "track" }, band, fill, tick);
    if (drawCap) {
      const line = h("div", { class: "cap", title: `monthly cap $${monthly.limit_usd}` });
      line.style.left = at(cap);
      track.append(line);
    }
    return h("div", { class: "fc" },
      h("div", { class: "team" }, r.team),
      track,
      h("div", { class: "amount" }, h("b", { usd: r.projected_usd, testid: `forecast-projected-${r.team}` }),
        h("span", { class: "muted" }, " (", h("span", { usd: r.low_usd }), " – ", h("span", { usd: r.high_usd }), ")")),
      h("div", { class: "fc-sub" }, "spent ", h("span", { usd: r.spent_usd, testid: `forecast-spent-${r.team}` }),
        " · burn ", h("span", { usd: r.burn_rate_usd_per_day, testid: `forecast-burn-${r.team}` }), "/day",
        monthly && !drawCap ? ` · monthly cap ${usdText(cap)} off scale` : ""),
      h("div", { class: "fc-sub right", testid: `forecast-runout-${r.team}` },
        ...(r.budgets.length ? r.budgets.flatMap((b, i) => (i ? [" · ", runOut(b)] : [runOut(b)])) : ["no budget"])));
  }));
}

function scopeText(a) {
  return a.scope === "team" ? `team ${a.team}` : `${a.scope} ${a.scope_name}`;
}

function renderAlerts(data, limit) {
  const thresholds = data.alerts.filter((a) => a.kind === "threshold");
  const refusals = data.alerts.filter((a) => a.kind === "refusal");
  const more = data.alerts.length >= limit ? "+" : "";
  $("alert-counts").replaceChildren(h("span", { testid: "alert-thresholds" }, `${thresholds.length}${more}`), " thresholds · ",
    h("span", { testid: "alert-refusals" }, `${refusals.length}${more}`), " refusals");
  if (!data.alerts.length) return $("alerts").replaceChildren(empty("No budget alerts or refusals in this period"));
  const byScope = new Map();
  for (const a of refusals) byScope.set(scopeText(a), (byScope.get(scopeText(a)) || 0) + 1);
  const summary = [...byScope.entries()].sort((a, b) => b[1] - a[1]).slice(0, 4)
    .map(([scope, n]) => h("span", { class: "pill bad", testid: `refusals-${scope}` }, `${scope} ×${n}`));
  const rows = data.alerts.slice(0, 8).map((a) => {
    const what = a.kind === "threshold"
      ? h("span", { class: `pill ${a.threshold_pct >= 100 ? "bad" : a.threshold_pct >= 80 ? "warn" : ""}` }, `${a.threshold_pct}% crossed`)
      : h("span", { class: "pill bad" }, "refused 429");
    const amount = h("span", {}, h("span", { usd: a.spent_usd }), ` of ${usdText(nanos(a.limit_usd))}`,
      a.kind === "refusal" ? h("span", { class: "muted" }, " + ", h("span", { usd: a.amount_usd })) : null);
    const row = h("tr", { title: `team ${a.team} · request ${a.request_id || "–"}` }, cell(`${a.at.slice(5, 10)} ${a.at.slice(11, 19)}`),
      cell(what), cell(scopeText(a)), cell(a.period), cell(amount, true));
    row.dataset.testid = `alert-${a.id}`;
    row.dataset.kind = a.kind;
    return row;
  });
  $("alerts").replaceChildren(...(summary.length ? [h("div", { class: "chips" }, h("span", { class: "muted" }, "refused: "), ...summary)] : []),
    table([["time (UTC)"], ["event"], ["scope"], ["period"], ["spent of cap (+ refused ask)", 1]], rows));
}

function renderTeamSavings(report, ceilings) {
  if (!report.rows.length) return $("team-savings").replaceChildren(empty());
  $("team-savings").replaceChildren(table([["team"], ["saved vs"], ["spend", 1], ["saved", 1], ["%", 1]],
    report.rows.map((r) => h("tr", { title: `baseline cost $${r.counterfactual_cost_usd}` }, cell(r.team),
      cell(h("span", { class: "pill", testid: `baseline-${r.team}` }, ceilings.get(r.team) ? `always-${ceilings.get(r.team)}` : "its ceiling")),
      cell(h("span", { usd: r.cost_usd }), true),
      cell(h("b", { class: "good", usd: r.savings_usd, testid: `savings-${r.team}` }), true),
      cell(`${pct(nanos(r.savings_usd), nanos(r.counterfactual_cost_usd)).toFixed(1)}%`, true)))));
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

function renderUntagged(report) {
  // The rows of one tag key (its values and its untagged row) partition the records: the untagged row's share of the
  // total is the spend nobody can attribute by that key.
  const total = nanos(report.totals.cost_usd);
  const untagged = report.rows.filter((r) => r.tag_value === null);
  if (!untagged.length || total === 0n) return $("untagged").replaceChildren();
  $("untagged").replaceChildren(h("div", { class: "section" }, "Untagged share of spend"), ...untagged.map((r) => {
    const name = r.tag_key === null ? "(no tags at all)" : r.tag_key;
    const share = pct(nanos(r.cost_usd), total);
    const fill = h("div", { class: `fill${share >= 50 ? " warn" : ""}` });
    fill.style.width = `${Math.min(share, 100)}%`;
    return h("div", { class: "burn wide" }, h("span", { class: "label", title: name }, name), h("div", { class: "track" }, fill),
      h("span", { class: "amount" }, h("span", { usd: r.cost_usd, testid: `untagged-${name}` }), " · ",
        h("b", { testid: `untagged-share-${name}` }, shareText(share))));
  }));
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

function renderExperiments(data) {
  if (!data.experiments.length) return $("experiments").replaceChildren(empty("No experiment manifests"));
  $("experiments").replaceChildren(...data.experiments.map((e) => {
    const status = h("span", { class: `pill ${e.status === "active" ? "ok" : e.status === "scheduled" ? "" : "bad"}`,
      testid: `experiment-status-${e.name}` }, e.status);
    const expires = e.expires_at ? `expires ${e.expires_at.slice(0, 16).replace("T", " ")} UTC` : "no expiry (production)";
    return h("div", { class: "experiment" },
      h("div", { class: "exp-head" }, h("b", {}, e.name), " ", status, h("span", { class: "muted" }, ` · ${e.team} · `),
        h("span", { testid: `experiment-owner-${e.name}` }, e.owner)),
      h("div", { class: "purpose", title: e.purpose }, e.purpose),
      burn("spent", e.spent_usd, e.budget_usd, `experiment-spent-${e.name}`),
      h("div", { class: "fc-sub" }, `${e.requests.toLocaleString("en-US")} requests · projected `,
        h("span", { class: e.projected_over_budget ? "bad" : "", usd: e.projected_usd, testid: `experiment-projected-${e.name}` }),
        ` by ${e.forecast_until.slice(0, 10)} · ${expires}`));
  }));
}

function renderValue(data) {
  $("value-card").hidden = false;
  if (!data.rows.length) return $("value").replaceChildren(empty());
  const perAccepted = (r, testid) => (r.cost_per_accepted_usd === null ? h("span", { class: "muted", testid }, "no accepted")
    : h("b", { usd: r.cost_per_accepted_usd, testid }));
  const rows = data.rows.map((r) => h("tr", {}, cell(r.team), cell(r.requests.toLocaleString("en-US"), true),
    cell(`${r.accepted} / ${r.with_feedback}`, true), cell(h("span", { usd: r.cost_usd }), true),
    cell(perAccepted(r, `value-${r.team}`), true)));
  rows.push(h("tr", { class: "total" }, cell("total"), cell(data.totals.requests.toLocaleString("en-US"), true),
    cell(`${data.totals.accepted} / ${data.totals.with_feedback}`, true), cell(h("span", { usd: data.totals.cost_usd }), true),
    cell(perAccepted(data.totals, "value-total"), true)));
  $("value").replaceChildren(table([["team"], ["requests", 1], ["accepted / rated", 1], ["spend", 1], ["per accepted", 1]], rows),
    h("div", { class: "fc-sub" }, "an output is accepted when its latest feedback says so (POST /v1/feedback)"));
}

function renderUpstreams(data) {
  $("upstreams-card").hidden = false;
  $("upstreams-hint").textContent = `this worker (pid ${data.pid}) · last ${data.latency_window} answers each`;
  const ms = (v) => (v === null ? "–" : v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString("en-US"));
  $("upstreams").replaceChildren(table(
    [["deployment"], ["status"], ["P50 ms", 1], ["P95 ms", 1], ["ok / failed", 1], ["in flight", 1], ["last failure"]],
    data.upstreams.map((u) => {
      const status = h("span", { class: `pill ${u.status === "healthy" ? "ok" : u.status === "cooldown" ? "bad" : "warn"}`,
        testid: `upstream-status-${u.id}` }, u.status === "cooldown" ? `cooldown ${Math.ceil(u.cooldown_remaining_s)}s` : u.status);
      const last = u.recent_failures.length ? `${u.recent_failures[0].kind}, ${Math.round(u.recent_failures[0].seconds_ago)}s ago` : "–";
      return h("tr", { title: `${u.model} (${u.provider}) · ${u.latency_ms.samples} samples` },
        cell(h("span", {}, u.id, h("span", { class: "muted" }, ` · ${u.tier}`))), cell(status),
        cell(h("span", { testid: `upstream-p50-${u.id}` }, ms(u.latency_ms.p50)), true),
        cell(h("span", { testid: `upstream-p95-${u.id}` }, ms(u.latency_ms.p95)), true),
        cell(h("span", { testid: `upstream-counts-${u.id}` }, `${u.successes} / ${u.failures}`), true),
        cell(String(u.inflight), true), cell(last));
    })));
}

function renderPercentiles(data) {
  const rows = [...data.rows].sort((a, b) => b.p95_output_tokens - a.p95_output_tokens);
  if (!rows.length) return $("percentiles").replaceChildren(empty());
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

// ---- routing evidence ---------------------------------------------------------------------------------------
// Per team in view: GET /v1/routing/evidence for the range (its summary sentence verbatim, its percent and money
// strings as given, its float grades kept in data-value), and for an admin GET /v1/routing/models/{team}.
const SHOWN_EVIDENCE = 8;  // teams: more would be as many requests per refresh; the team filter shows any one

async function fetchEvidence(teams, view) {
  const names = teams.teams.map((t) => t.team);
  const shown = await Promise.all(names.slice(0, SHOWN_EVIDENCE).map(async (team) => {
    const q = `team=${encodeURIComponent(team)}`;
    const [evidence, models] = await Promise.all([
      api(`/v1/routing/evidence?${q}&start=${view.start}&end=${view.end}`).catch(teamFailure),
      state.admin === false ? null : api(`/v1/routing/models/${encodeURIComponent(team)}`).catch(teamFailure),
    ]);
    return { team, evidence, models };
  }));
  return { shown, more: Math.max(0, names.length - SHOWN_EVIDENCE) };
}

// One team's failure is shown in its block, not as the page's: a refused key still returns to the prompt.
function teamFailure(error) {
  if (error instanceof AuthError && state.admin !== null) return { failed: error.message };
  if (error instanceof AuthError) return null;  // the first refresh does not know yet whether the key is an admin's
  return { failed: error.message };
}

function percentOf(value, testid) {
  return h("span", { testid, title: String(value) }, `${(100 * value).toFixed(1)}%`);
}

function withValue(el, value) {
  el.dataset.value = String(value);
  return el;
}

function intervalText(low, high) {
  return `${(100 * low).toFixed(1)}–${(100 * high).toFixed(1)}%`;
}

function modelLine(team, models) {
  if (!models) return null;
  if (models.failed) return h("span", { class: "muted", testid: `evidence-model-${team}` }, `routing model: ${models.failed}`);
  const promoted = models.active_version !== null;
  return h("span", { testid: `evidence-model-${team}`, title: `${models.models.length} registered version(s)` },
    "serving ", h("code", { testid: `evidence-model-id-${team}` }, models.serving_model_id), " · ",
    h("span", { class: `pill ${promoted ? "ok" : ""}`, testid: `evidence-model-status-${team}` },
      promoted ? `v${models.active_version} promoted` : "default model"));
}

function learningHint(team, ceiling) {
  return h("div", { class: "ev-empty", testid: `evidence-empty-${team}` },
    h("b", {}, "No judged samples in this period. "),
    "Learning is turned on per team by a ", h("code", {}, "learning:"), " block in the policy, e.g. ",
    h("code", {}, `learning: {shadow_share: 0.05, shadow_daily_usd: 5, judge: <deployment or tier>}`),
    ` under teams.${team}: that share of its requests is also sent to the tier it was not routed to`,
    ceiling ? ` (always-${ceiling} when it stayed lower)` : "",
    ", the judge grades both answers, and the grades appear here as they are stored.");
}

function tierTable(e) {
  const tiers = [];
  const row = (tier) => {
    let r = tiers.find((t) => t.tier === tier);
    if (!r) tiers.push(r = { tier, quality: null, chat: null, measuring: [] });
    return r;
  };
  for (const q of e.quality_per_tier) row(q.tier).quality = q;
  for (const c of e.chat_per_tier) row(c.tier).chat = c;
  for (const m of e.measuring) row(m.tier).measuring.push(m);
  const id = (tier, what) => `evidence-${what}-${e.team}-${tier}`;
  const body = tiers.map((t) => {
    const q = t.quality;
    const grade = q ? withValue(h("b", { testid: id(t.tier, "grade") }, q.mean_grade.toFixed(3)), q.mean_grade) : "–";
    const wilson = q ? h("span", { testid: id(t.tier, "wilson"), title: `${q.wilson_low} – ${q.wilson_high}` },
      `${q.wilson_low.toFixed(3)}–${q.wilson_high.toFixed(3)}`) : "–";
    const money = (text, what) => (text === null ? "–" : h("span", { usd: text, testid: id(t.tier, what) }));
    const measuring = t.measuring.length ? h("span", { title: t.measuring.map((m) => `${m.purpose}: ${m.requests} requests, $${m.cost_usd}`).join("\n") },
      h("span", { usd: decimalOf(t.measuring.reduce((a, m) => a + nanos(m.cost_usd), 0n)), testid: id(t.tier, "measuring") }),
      h("span", { class: "muted" }, ` · ${t.measuring.map((m) => m.purpose).join("+")}`)) : "–";
    return h("tr", {}, cell(h("span", {}, t.tier, t.tier === e.ceiling ? h("span", { class: "muted" }, " · ceiling") : null)),
      cell(h("span", { testid: id(t.tier, "judged") }, q ? String(q.n) : "0"), true), cell(grade, true), cell(wilson, true),
      cell(t.chat ? t.chat.requests.toLocaleString("en-US") : "0", true),
      cell(money(t.chat ? t.chat.cost_usd : null, "cost"), true),
      cell(money(t.chat ? t.chat.counterfactual_cost_usd : null, "counterfactual"), true), cell(measuring, true));
  });
  body.push(h("tr", { class: "total" }, cell("total"), cell(String(e.judged), true), cell(""), cell(""),
    cell(e.chat_per_tier.reduce((a, c) => a + c.requests, 0).toLocaleString("en-US"), true),
    cell(h("span", { usd: e.cost_usd }), true), cell(h("span", { usd: e.counterfactual_cost_usd }), true),
    cell(h("span", { usd: e.measuring_cost_usd }), true)));
  return table([["tier"], ["judged", 1], ["mean grade", 1], ["95% Wilson", 1], ["chat requests", 1], ["chat spend", 1],
    [`at ${e.ceiling || "ceiling"} prices`, 1], ["shadow + judge", 1]], body);
}

function evidenceBlock({ team, evidence: e, models }) {
  const head = h("div", { class: "ev-head" }, h("span", { class: "team" }, team), modelLine(team, models));
  if (!e) return h("div", { class: "evidence", testid: `evidence-${team}` }, head);
  if (e.failed) return h("div", { class: "evidence", testid: `evidence-${team}` }, head, h("div", { class: "muted" }, e.failed));
  if (e.ceiling) head.insertBefore(h("span", { class: "muted" }, `ceiling ${e.ceiling}`), head.children[1] || null);
  const q = e.quality_ratio;
  const figures = h("div", { class: "ev-figures" },
    h("span", {}, "saved ", h("b", { testid: `evidence-saved-${team}` }, e.saved_percent === null ? "–" : `${e.saved_percent}%`),
      " · net of measuring ", h("b", { testid: `evidence-saved-net-${team}` },
        e.saved_net_of_measuring_percent === null ? "–" : `${e.saved_net_of_measuring_percent}%`)),
    h("span", {}, "chat ", h("b", { usd: e.cost_usd, testid: `evidence-cost-${team}` }), ` vs always-${e.ceiling || "ceiling"} `,
      h("b", { usd: e.counterfactual_cost_usd, testid: `evidence-counterfactual-${team}` }), " · measuring ",
      h("b", { usd: e.measuring_cost_usd, testid: `evidence-measuring-${team}` })),
    q === null ? h("span", { testid: `evidence-quality-${team}` }, "judged quality unknown")
      : h("span", { testid: `evidence-quality-${team}`, title: e.quality_ratio_ci }, "judged quality ",
        withValue(percentOf(q.value, `evidence-quality-value-${team}`), q.value), " of always-", e.ceiling || "ceiling",
        " · 95% CI ", h("b", { testid: `evidence-quality-ci-${team}`, title: `${q.low} – ${q.high}` }, intervalText(q.low, q.high))),
    h("span", {}, h("b", { testid: `evidence-judged-${team}` }, String(e.judged)), " judged · ",
      h("b", {}, String(e.judged_vs_ceiling)), ` against ${e.ceiling || "the ceiling"}`));
  const summary = h("p", { class: "ev-summary", testid: `evidence-summary-${team}` }, e.summary);
  return h("div", { class: "evidence", testid: `evidence-${team}` }, head, summary, figures,
    e.judged === 0 ? learningHint(team, e.ceiling) : tierTable(e));
}

function renderEvidence(found) {
  if (!found.shown.length) return $("evidence").replaceChildren(empty("No teams"));
  $("evidence").replaceChildren(...found.shown.map(evidenceBlock),
    ...(found.more ? [h("div", { class: "more" }, `+${found.more} more teams: choose one in the team filter`)] : []));
}

function renderTeamFilter(teams) {
  $("team-filter-box").hidden = !state.admin;
  if (!state.admin || state.team) return;  // the unfiltered list names every team the admin may choose
  const select = $("team-filter");
  const names = teams.teams.map((t) => t.team);
  const shown = [...select.options].slice(1).map((o) => o.value);
  if (names.join("\u0000") === shown.join("\u0000")) return;
  select.replaceChildren(h("option", { value: "" }, "All teams"), ...names.map((n) => h("option", { value: n }, n)));
}

// ---- refresh loop -------------------------------------------------------------------------------------------
const ALERT_LIMIT = 1000;

async function refresh() {
  if (!sessionStorage.getItem(KEY_STORE)) return;
  if (state.busy) { state.again = true; return; }  // a change made during a refresh is shown by the next one
  state.busy = true;
  state.again = false;
  try {
    const tq = teamParam();
    const teams = await api(`/v1/spend/teams?${tq.slice(1)}`);
    const today = teams.day;
    state.today = today;
    const tomorrow = addDays(today, 1);
    const view = currentRange(today);
    const rq = `start=${view.start}&end=${view.end}${tq}`;
    const oneDay = view.end === addDays(view.start, 1);
    const [month, day, chosen, tiers, keys, tags, percentiles, requests, series, forecast, budgets, experiments, alerts,
      value, upstreams, evidence] = await Promise.all([
      api(`/v1/spend/report?group_by=team${tq}`),
      api(`/v1/spend/report?start=${today}&end=${tomorrow}&group_by=team${tq}`),
      api(`/v1/spend/report?${rq}&group_by=team`),
      api(`/v1/spend/report?${rq}&group_by=tier`),
      api(`/v1/spend/report?${rq}&group_by=key`),
      api(`/v1/spend/report?${rq}&group_by=tag`),
      api(`/v1/spend/percentiles?${rq}`),
      api(`/v1/spend/requests?limit=8&order=cost&hours=24${tq}`),
      oneDay ? api(`/v1/spend/timeseries?bucket=hour&day=${view.start}${tq}`) : api(`/v1/spend/report?${rq}&group_by=day`),
      api(`/v1/spend/forecast?group_by=team${tq}`),
      api(`/v1/spend/budgets?${tq.slice(1)}`),
      api(`/v1/spend/experiments?${tq.slice(1)}`),
      api(`/v1/alerts?since=${view.start}&until=${view.end}&limit=${ALERT_LIMIT}${tq}`),
      api(`/v1/spend/value?${rq}&group_by=team`),
      state.admin === false ? null : api("/v1/upstreams").catch((e) => (e instanceof AuthError ? null : Promise.reject(e))),
      fetchEvidence(teams, view),
    ]);
    if (!state.team) state.admin = month.team === null;  // unfiltered, an admin key sees every team
    $("scope").textContent = state.admin ? (state.team ? `Team ${state.team} · admin` : "All teams · admin") : `Team ${month.team}`;
    const ceilings = new Map(teams.teams.map((t) => [t.team, t.ceiling_tier]));
    for (const el of document.querySelectorAll(".pname")) el.textContent = view.label;
    const viewKey = `${view.start}/${view.end}/${state.team}`;
    if (state.period !== "custom" && document.body.dataset.view !== viewKey) {  // not over a date being typed
      $("range-start").value = view.start;
      $("range-end").value = view.end;
    }
    renderTeamFilter(teams);
    renderKpis(day, month, chosen, ceilings);
    renderBudgets(teams, budgets, experiments);
    if (oneDay) {
      renderChart(series.points.map((p) => ({ label: p.hour.slice(11, 13), tip: `${p.hour.slice(11, 16)} UTC`,
        cost: p.cost_usd, requests: p.requests })), `per hour (UTC) · ${view.start}`);
    } else {
      renderChart(dayPoints(series, view.start, view.end), `per day · ${view.start} – ${addDays(view.end, -1)}`);
    }
    renderForecast(forecast);
    renderAlerts(alerts, ALERT_LIMIT);
    renderTeamSavings(chosen, ceilings);
    renderTiers(tiers);
    renderUntagged(tags);
    renderRanking("keys", keys.rows, (r) => r.key_id, "key");
    renderRanking("tags", tags.rows.filter((r) => r.tag_value !== null), (r) => `${r.tag_key}=${r.tag_value}`, "tag");
    renderExperiments(experiments);
    renderValue(value);
    if (upstreams) renderUpstreams(upstreams); else $("upstreams-card").hidden = true;
    renderEvidence(evidence);
    renderPercentiles(percentiles);
    renderRequests(requests);
    state.refreshes += 1;
    document.body.dataset.refreshes = String(state.refreshes);
    document.body.dataset.view = viewKey;  // what the page now shows (tests wait for it)
    $("updated").textContent = `Updated ${new Date().toISOString().slice(11, 19)} UTC`;
    $("dot").className = "dot ok";
  } catch (error) {
    if (error instanceof AuthError) return showLogin(error.message);
    $("dot").className = "dot err";
    $("updated").textContent = `Update failed: ${error.message}`;
  } finally {
    state.busy = false;
    if (state.again) refresh();
  }
}

// The CSV of the range and team in view, grouped as chosen: the spend report's own CSV (exact decimal strings).
async function exportCsv() {
  if (!state.today) return;
  const view = currentRange(state.today);
  const group = $("export-group").value;
  const path = `/v1/spend/report?start=${view.start}&end=${view.end}&group_by=${encodeURIComponent(group)}&format=csv${teamParam()}`;
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) {
    $("dot").className = "dot err";
    $("updated").textContent = `Export failed: ${await apiError(response, path)}`;
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const name = `spend-${group.replace(",", "-")}-${view.start}-${view.end}${state.team ? `-${state.team}` : ""}.csv`;
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function showLogin(message = "") {
  sessionStorage.removeItem(KEY_STORE);
  clearInterval(state.timer);
  $("main").hidden = true;
  $("controls").hidden = true;
  $("toolbar").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("scope").textContent = "";
  $("key").focus();
}

function start() {
  state.admin = null;
  state.team = "";
  $("team-filter").value = "";
  $("login").hidden = true;
  $("main").hidden = false;
  $("controls").hidden = false;
  $("toolbar").hidden = false;
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  refresh();
}

function setPeriod(period) {
  state.period = period;
  $("range-error").textContent = "";
  for (const b of document.querySelectorAll(".period button")) b.classList.toggle("on", b.dataset.period === period);
  refresh();
}

function applyRange(event) {
  event.preventDefault();
  const start = $("range-start").value, end = $("range-end").value;
  if (!start || !end || end <= start) {
    $("range-error").textContent = `the end must be after the start (it is exclusive: ${start || "start"} to the next day is one day)`;
    return;
  }
  state.custom = { start, end };
  setPeriod("custom");
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
  $("range").addEventListener("submit", applyRange);
  $("team-filter").addEventListener("change", () => { state.team = $("team-filter").value; refresh(); });
  $("export").addEventListener("click", () => exportCsv());
  if (sessionStorage.getItem(KEY_STORE)) start(); else showLogin();
});
