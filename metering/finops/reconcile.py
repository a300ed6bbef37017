"""Ledger against invoice: per UTC day and model, what tiergate metered beside what the provider billed.

The comparison is pure (``reconcile`` takes the ledger's ``(day, model)`` sums and the parsed exports); reading
both is the caller's. Only what the exports cover is compared: the providers they come from, the days they have
buckets for (an empty bucket says "nothing that day"), and the models of those providers in the ledger.

Row statuses, worst first:

- ``unknown_model``: billed under a model the ledger never saw in the period (traffic that bypassed the proxy, or a
  fallback recorded as another model);
- ``unpriced``: the ledger has tokens but $0 for it (a model metered without a price);
- ``missing_in_ledger`` / ``missing_in_invoice``: one side has the day and model, the other nothing;
- ``price_gap``: the tokens agree but the cost does not (a stale or negotiated price);
- ``usage_gap`` / ``cost_gap``: the tokens (or, without a usage export, just the cost) disagree;
- ``ok``: within tolerance (relative, or absolute for small amounts: providers round their figures).

Model names match after dropping a provider prefix (``anthropic/claude-...``) and, when that is unambiguous, a
snapshot date (the usage API reports ``gpt-4o-mini-2024-07-18`` for a ledger's ``gpt-4o-mini``). Exports must be
grouped by model (OpenAI ``group_by=line_item`` / ``model``, Anthropic ``group_by=description`` / ``model``) for
per-model rows; a cost export that is not is compared per day only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from metering.finops.invoices import Invoice, Provider
from metering.money import format_usd
from metering.prices import load_table

Status = Literal["unknown_model", "unpriced", "missing_in_ledger", "missing_in_invoice", "price_gap", "usage_gap",
                 "cost_gap", "ok"]
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True, slots=True)
class LedgerCell:
    cost_nanos: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0


@dataclass(frozen=True, slots=True)
class Tolerance:
    relative: float = 0.01
    absolute_nanos: int = 10_000_000  # $0.01
    absolute_tokens: int = 0

    def cost_ok(self, ledger: int, invoice: int) -> bool:
        return abs(invoice - ledger) <= max(self.relative * abs(invoice), self.absolute_nanos)

    def tokens_ok(self, ledger: int, invoice: int) -> bool:
        return abs(invoice - ledger) <= max(self.relative * invoice, self.absolute_tokens)


@dataclass(frozen=True, slots=True)
class Row:
    day: date
    provider: Provider
    model: str  # the invoice's name when it has one, else the ledger's
    ledger_model: str | None
    status: Status
    ledger: LedgerCell
    invoice_cost_nanos: int | None  # None: no cost export for this provider
    invoice_input_tokens: int | None  # None: no usage export for this provider
    invoice_output_tokens: int | None
    invoice_requests: int | None

    @property
    def gap_nanos(self) -> int:
        """What the invoice charged beyond the ledger (negative: the ledger is higher)."""
        return (self.invoice_cost_nanos or 0) - self.ledger.cost_nanos if self.invoice_cost_nanos is not None else 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "day": self.day.isoformat(), "provider": self.provider, "model": self.model,
            "ledger_model": self.ledger_model, "status": self.status,
            "ledger_cost_usd": format_usd(self.ledger.cost_nanos), "ledger_requests": self.ledger.requests,
            "ledger_input_tokens": self.ledger.prompt_tokens, "ledger_output_tokens": self.ledger.completion_tokens,
        }
        if self.invoice_cost_nanos is not None:
            out.update(invoice_cost_usd=format_usd(self.invoice_cost_nanos), gap_usd=format_usd(self.gap_nanos),
                       capture_rate=_rate(self.ledger.cost_nanos, self.invoice_cost_nanos))
        if self.invoice_input_tokens is not None:
            out.update(invoice_input_tokens=self.invoice_input_tokens,
                       invoice_output_tokens=self.invoice_output_tokens, invoice_requests=self.invoice_requests)
        return out


@dataclass(frozen=True, slots=True)
class DayTotal:
    """A provider's day: every model and every non-model charge, which exports not grouped by model can only
    be compared at."""

    day: date
    provider: Provider
    ledger_cost_nanos: int
    invoice_cost_nanos: int
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"day": self.day.isoformat(), "provider": self.provider,
                "ledger_cost_usd": format_usd(self.ledger_cost_nanos),
                "invoice_cost_usd": format_usd(self.invoice_cost_nanos),
                "gap_usd": format_usd(self.invoice_cost_nanos - self.ledger_cost_nanos),
                "capture_rate": _rate(self.ledger_cost_nanos, self.invoice_cost_nanos), "ok": self.ok}


@dataclass(frozen=True, slots=True)
class Reconciliation:
    start: date
    end: date
    invoices: tuple[Invoice, ...]
    rows: tuple[Row, ...]
    days: tuple[DayTotal, ...]
    other_charges: tuple[tuple[date, str, int], ...]  # billed without a model: (day, item, nanos)
    uncovered_models: tuple[str, ...]  # ledger models of providers no export covers
    tolerance: Tolerance = field(default_factory=Tolerance)

    @property
    def ledger_nanos(self) -> int:
        return sum(d.ledger_cost_nanos for d in self.days)

    @property
    def invoice_nanos(self) -> int:
        return sum(d.invoice_cost_nanos for d in self.days)

    @property
    def token_capture_rate(self) -> float | None:
        """Ledger tokens / invoiced tokens (input and output) over the rows a usage export covers."""
        usage = [r for r in self.rows if r.invoice_input_tokens is not None]
        ledger = sum(r.ledger.prompt_tokens + r.ledger.completion_tokens for r in usage)
        return _rate(ledger, sum((r.invoice_input_tokens or 0) + (r.invoice_output_tokens or 0) for r in usage))

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.rows) and all(d.ok for d in self.days)

    def models(self, status: Status) -> list[str]:
        return sorted({r.model for r in self.rows if r.status == status})

    def largest_gaps(self, n: int = 10) -> list[Row]:
        off = [r for r in self.rows if r.status != "ok"]
        return sorted(off, key=lambda r: (-abs(r.gap_nanos), r.day, r.model))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(), "end": self.end.isoformat(), "ok": self.ok,
            "tolerance": {"relative": self.tolerance.relative,
                          "absolute_usd": format_usd(self.tolerance.absolute_nanos)},
            "invoices": [{"file": i.path, "format": i.source, "lines": len(i.lines),
                          "days": len([d for d in i.days if self.start <= d < self.end])} for i in self.invoices],
            "ledger_cost_usd": format_usd(self.ledger_nanos), "invoice_cost_usd": format_usd(self.invoice_nanos),
            "capture_rate": _rate(self.ledger_nanos, self.invoice_nanos),
            "token_capture_rate": self.token_capture_rate,
            "unknown_models": self.models("unknown_model"), "unpriced_models": self.models("unpriced"),
            "uncovered_ledger_models": list(self.uncovered_models),
            "largest_gaps": [r.to_dict() for r in self.largest_gaps()],
            "other_charges": [{"day": d.isoformat(), "item": item, "cost_usd": format_usd(c)}
                              for d, item, c in self.other_charges],
            "days": [d.to_dict() for d in self.days], "rows": [r.to_dict() for r in self.rows],
        }

    def render_text(self) -> str:
        rate = _rate(self.ledger_nanos, self.invoice_nanos)
        lines = [f"Reconciliation [{self.start}, {self.end}): {'OK' if self.ok else 'NOT within tolerance'} "
                 f"(±{self.tolerance.relative:.1%} or ${format_usd(self.tolerance.absolute_nanos)})",
                 *(f"  {i.path}: {i.source}, {len(i.lines)} lines" for i in self.invoices),
                 f"ledger ${format_usd(self.ledger_nanos)} vs invoiced ${format_usd(self.invoice_nanos)}: "
                 f"capture rate {rate if rate is not None else 'n/a'}; tokens: {self.token_capture_rate or 'n/a'}"]
        for label, models in (("unknown models (billed, never metered)", self.models("unknown_model")),
                              ("unpriced models (metered at $0)", self.models("unpriced")),
                              ("ledger models no invoice covers", list(self.uncovered_models))):
            if models:
                lines.append(f"{label}: {', '.join(models)}")
        gaps = self.largest_gaps()
        if gaps:
            lines.append("largest gaps:")
            for r in gaps:
                billed = f"${format_usd(r.invoice_cost_nanos)}" if r.invoice_cost_nanos is not None else "-"
                lines.append(f"  {r.day} {r.model:<32} {r.status:<18} ledger ${format_usd(r.ledger.cost_nanos)}"
                             f"  invoice {billed}")
        off_days = [d for d in self.days if not d.ok]
        if off_days:
            lines.append("days off (every model and charge of the provider):")
        for day in off_days:
            lines.append(f"  {day.day} {day.provider}: ledger ${format_usd(day.ledger_cost_nanos)}, "
                         f"invoice ${format_usd(day.invoice_cost_nanos)}")
        return "\n".join(lines) + "\n"


def _rate(ledger: int, invoice: int) -> float | None:
    return round(ledger / invoice, 4) if invoice else None


def _bare(model: str) -> str:
    return model.rsplit("/", 1)[-1].lower()


def _base(model: str) -> str:
    return _SNAPSHOT.sub("", _bare(model))


def provider_of(model: str) -> str:
    """The ledger model's provider: its litellm prefix, else the price table's, else OpenAI (a bare name is an
    OpenAI model in litellm's convention, as the policy compiler reads it)."""
    if "/" in model:
        prefix = model.split("/", 1)[0]
        return {"openai": "openai", "anthropic": "anthropic"}.get(prefix, prefix)
    entry = load_table().get(model)
    provider = entry.get("litellm_provider") if isinstance(entry, dict) else None
    if isinstance(provider, str):
        return provider
    return "anthropic" if model.startswith("claude") else "openai"


def match_models(invoice_models: Iterable[str], ledger_models: Iterable[str]) -> dict[str, str]:
    """Invoice model -> ledger model: same name without the provider prefix, else the one ledger model with the
    same name without a snapshot date."""
    ledger = list(ledger_models)
    out = {}
    for m in invoice_models:
        exact = [name for name in ledger if _bare(name) == _bare(m)]
        candidates = exact or [name for name in ledger if _base(name) == _base(m)]
        if len(candidates) == 1:
            out[m] = candidates[0]
    return out


def _status(cell: LedgerCell, cost: int | None, tokens: tuple[int, int] | None, known: bool,
            tol: Tolerance) -> Status:
    if not known:
        return "unknown_model"
    if cell.cost_nanos == 0 and cell.prompt_tokens + cell.completion_tokens > 0:
        return "unpriced"
    billed = (cost or 0) > 0 or (tokens is not None and sum(tokens) > 0)
    if billed and cell.requests == 0:
        return "missing_in_ledger"
    if cell.requests > 0 and not billed:
        return "missing_in_invoice"
    tokens_ok = tokens is None or (tol.tokens_ok(cell.prompt_tokens, tokens[0])
                                   and tol.tokens_ok(cell.completion_tokens, tokens[1]))
    if cost is not None and not tol.cost_ok(cell.cost_nanos, cost):
        return "price_gap" if tokens is not None and tokens_ok else ("usage_gap" if not tokens_ok else "cost_gap")
    return "ok" if tokens_ok else "usage_gap"


def reconcile(ledger: Mapping[tuple[date, str], LedgerCell], invoices: Sequence[Invoice], start: date, end: date,
              tol: Tolerance = Tolerance()) -> Reconciliation:
    """Compare over ``[start, end)``; ``ledger`` maps (day, model) to the ledger's sums (model "" excluded)."""
    ledger = {k: v for k, v in ledger.items() if start <= k[0] < end}
    providers = sorted({i.provider for i in invoices})
    by_provider: dict[str, list[str]] = {}
    for model in {m for _, m in ledger}:
        by_provider.setdefault(provider_of(model), []).append(model)
    uncovered = tuple(sorted(m for p, ms in by_provider.items() if p not in providers for m in ms))
    rows: list[Row] = []
    days: list[DayTotal] = []
    other: list[tuple[date, str, int]] = []
    for provider in providers:
        files = [i for i in invoices if i.provider == provider]
        covered = sorted({d for i in files for d in i.days if start <= d < end})
        lines = [ln for i in files for ln in i.lines if start <= ln.day < end]
        has_cost = any(i.source.endswith(("costs", "cost")) for i in files)
        has_usage = any(i.source.endswith("usage") for i in files)
        models = sorted(by_provider.get(provider, []))
        named = sorted({ln.model for ln in lines if ln.model})
        mapping = match_models(named, models)
        costs: dict[tuple[date, str], int] = {}
        tokens: dict[tuple[date, str], list[int]] = {}
        by_model_cost = has_cost and any(ln.model for ln in lines if ln.cost_nanos is not None)
        for ln in lines:
            if ln.model is None:
                if ln.cost_nanos and by_model_cost:  # else the export is not by model: these are day totals
                    other.append((ln.day, f"{provider}: {ln.item}", ln.cost_nanos))
                continue
            key = (ln.day, mapping.get(ln.model, ln.model))
            if ln.cost_nanos is not None:
                costs[key] = costs.get(key, 0) + ln.cost_nanos
            if ln.input_tokens is not None:
                acc = tokens.setdefault(key, [0, 0, 0])
                acc[0] += ln.input_tokens
                acc[1] += ln.output_tokens or 0
                acc[2] += ln.requests or 0
        names = {mapping.get(m, m): m for m in named}  # ledger-side key -> the invoice's own name
        for day in covered:
            for key_model in sorted(set(models) | set(names)):
                cell = ledger.get((day, key_model), LedgerCell())
                cost = costs.get((day, key_model), 0) if by_model_cost else None
                usage = tokens.get((day, key_model), [0, 0, 0]) if has_usage else None
                if cell.requests == 0 and not cost and not (usage and any(usage)):
                    continue
                known = key_model in models
                rows.append(Row(day, provider, names.get(key_model, key_model), key_model if known else None,
                                _status(cell, cost, (usage[0], usage[1]) if usage else None, known, tol),
                                cell, cost, usage[0] if usage else None, usage[1] if usage else None,
                                usage[2] if usage else None))
            if has_cost:
                ledger_day = sum(ledger.get((day, m), LedgerCell()).cost_nanos for m in models)
                invoice_day = sum(ln.cost_nanos or 0 for ln in lines if ln.day == day)
                days.append(DayTotal(day, provider, ledger_day, invoice_day, tol.cost_ok(ledger_day, invoice_day)))
    return Reconciliation(start, end, tuple(invoices), tuple(rows), tuple(days), tuple(other), uncovered, tol)
