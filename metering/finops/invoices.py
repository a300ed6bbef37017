"""Provider usage and cost exports, read into one shape: per UTC day and model, a cost or token counts.

Four documented formats, detected from their content (each is the JSON an admin API returns, one page or a JSON
array of pages):

- OpenAI ``GET /v1/organization/costs``: ``{"object": "page", "data": [{"object": "bucket", "start_time",
  "end_time", "results": [{"object": "organization.costs.result", "amount": {"value", "currency"}, "line_item",
  "project_id"}]}]}``. ``amount.value`` is in dollars. ``line_item`` (with ``group_by=line_item``) reads like
  ``"gpt-4o-2024-08-06, input"``: the model is the part before the first comma. Without it, a day's total.
- OpenAI ``GET /v1/organization/usage/completions``: the same buckets with ``organization.usage.completions.result``
  results: ``input_tokens`` (cached included), ``output_tokens``, ``input_cached_tokens``, ``num_model_requests``,
  ``model`` (with ``group_by=model``). (OpenAI's OpenAPI spec names the list ``result``; its examples and API
  return ``results``; both are read.)
- Anthropic ``GET /v1/organizations/cost_report``: ``{"data": [{"starting_at", "ending_at", "results": [{"amount",
  "currency", "model", "cost_type", "token_type", "description", ...}]}], "has_more", "next_page"}``. ``amount`` is
  a decimal string in cents (``"123.45"`` is $1.2345); ``model`` is null for non-token costs (web search, code
  execution) and when not grouped by description.
- Anthropic ``GET /v1/organizations/usage_report/messages``: buckets of ``uncached_input_tokens``,
  ``cache_read_input_tokens``, ``cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}``,
  ``output_tokens``, ``model``. Input is the sum of the three (the ledger's ``prompt_tokens`` counts every input
  token, cached ones included); buckets of an hour or a minute add up into their day.

The Anthropic console's CSV exports exist (usage and cost pages) but their columns are not documented, so they are
not guessed at: export through the Admin API instead. Bad input raises ``InvoiceError`` naming the file, the line
and the field.
"""

from __future__ import annotations

import bisect
import json
import json.scanner
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from metering.money import NANOS_PER_USD

Provider = Literal["openai", "anthropic"]
Source = Literal["openai-costs", "openai-usage", "anthropic-cost", "anthropic-usage"]
_DAY_SECONDS = 86400
_TICK = timedelta(microseconds=1)  # a bucket ending at midnight lies in the day before


class InvoiceError(ValueError):
    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        self.file, self.line, self.field = file, line, field
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    source: Source
    day: date
    model: str | None  # None: not broken down by model, or not a model's cost (web search, code execution)
    item: str  # the provider's line item / description / cost type, for people
    cost_nanos: int | None = None  # cost exports
    input_tokens: int | None = None  # usage exports
    output_tokens: int | None = None
    cached_tokens: int | None = None
    requests: int | None = None



class _Obj(dict):  # type: ignore[type-arg]
    """A JSON object that remembers where it is in the text (for error messages)."""

    span: tuple[int, int] = (0, 0)


def _load(path: Path) -> tuple[Any, str]:
    """JSON with numbers as Decimal (money never passes through float) and objects tagged with their span."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvoiceError(str(path), None, "", f"cannot read: {exc}") from None
    decoder = json.JSONDecoder(parse_float=Decimal)
    # parse_object and scan_once are CPython's JSONDecoder attributes (and py_make_scanner json.scanner's) that
    # typeshed does not declare: the ignores below are for that, the behaviour is the stdlib's documented hook.
    plain = decoder.parse_object  # type: ignore[attr-defined]

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[_Obj, int]:
        obj, end = plain(s_and_end, *args)
        tagged = _Obj(obj)
        tagged.span = (s_and_end[1] - 1, end)
        return tagged, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    # the C scanner would bypass parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        return decoder.decode(text), text
    except json.JSONDecodeError as exc:
        raise InvoiceError(str(path), exc.lineno, "", f"not JSON: {exc.msg}") from None


class _Reader:
    """Field access with errors that name the file, the line of the field (or of its object) and the field."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.text = text
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line(self, obj: Any, field: str) -> int | None:
        if not isinstance(obj, _Obj):
            return None
        start, end = obj.span
        # The field's own line: its key inside this object (a nested object's key of the same name would come
        # after this object's own, which JSON exporters write first; good enough for pointing a person at it).
        match = re.compile(rf'"{re.escape(field)}"\s*:').search(self.text, start, end) if field else None
        return bisect.bisect_left(self._newlines, match.start() if match else start) + 1

    def fail(self, obj: Any, field: str, message: str) -> InvoiceError:
        return InvoiceError(self.file, self.line(obj, field), field, message)

    def get(self, obj: Any, field: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(obj, field, "expected an object")
        value = obj.get(field)
        if value is None and optional:
            return None
        if not isinstance(value, kind) or isinstance(value, bool):
            got = "missing" if field not in obj else f"got {type(value).__name__}"
            raise self.fail(obj, field, f"expected {_kind_name(kind)} ({got})")
        return value

    def count(self, obj: Any, field: str, optional: bool = False) -> int | None:
        value = self.get(obj, field, (int, Decimal), optional)
        if value is None:
            return None
        if value != int(value) or value < 0:
            raise self.fail(obj, field, f"expected a token count, got {value}")
        return int(value)

    def day_of(self, bucket: Any, start: datetime, end: datetime, field: str) -> date:
        if end <= start or (end - start).total_seconds() > _DAY_SECONDS or start.date() != (end - _TICK).date():
            raise self.fail(bucket, field, f"a bucket must lie within one UTC day, got {start} to {end}")
        return start.date()


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {"int": "a number", "Decimal": "a number", "str": "a string", "list": "a list", "dict": "an object"}
    return " or ".join(dict.fromkeys(names.get(k.__name__, k.__name__) for k in kinds))


def _pages(doc: Any) -> list[Any]:
    return doc if isinstance(doc, list) else [doc]


def _results(r: _Reader, bucket: Any) -> list[Any]:
    field = "result" if isinstance(bucket, dict) and "results" not in bucket and "result" in bucket else "results"
    results: list[Any] = r.get(bucket, field, list)  # get checked it is a list
    return results


def _detect(r: _Reader, doc: Any) -> Source:
    for page in _pages(doc):
        for bucket in r.get(page, "data", list):
            for result in _results(r, bucket):
                if not isinstance(result, dict):
                    raise r.fail(bucket, "results", "expected a list of objects")
                kind = result.get("object")
                if kind == "organization.costs.result":
                    return "openai-costs"
                if kind == "organization.usage.completions.result":
                    return "openai-usage"
                if "uncached_input_tokens" in result:
                    return "anthropic-usage"
                if "amount" in result:
                    return "anthropic-cost"
                raise r.fail(result, "object", "not a result of OpenAI's costs or completions usage, nor of "
                                               "Anthropic's cost or messages usage report")
    raise r.fail(doc, "data", "no results in any bucket: nothing to reconcile")


def _unix_day(r: _Reader, bucket: Any) -> date:
    start, end = (r.get(bucket, f, (int, Decimal)) for f in ("start_time", "end_time"))
    return r.day_of(bucket, datetime.fromtimestamp(int(start), UTC),
                    datetime.fromtimestamp(int(end), UTC), "start_time")


def _rfc3339_day(r: _Reader, bucket: Any) -> date:
    stamps = []
    for f in ("starting_at", "ending_at"):
        text = r.get(bucket, f, str)
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise r.fail(bucket, f, f"not an RFC 3339 timestamp: {text!r}") from None
        if stamp.tzinfo is None:
            raise r.fail(bucket, f, f"timestamp without a zone: {text!r}")
        stamps.append(stamp.astimezone(UTC))
    return r.day_of(bucket, stamps[0], stamps[1], "starting_at")


def _nanos(r: _Reader, obj: Any, field: str, value: Decimal, scale: Decimal) -> int:
    try:
        return int((value * scale).to_integral_value(rounding=ROUND_HALF_EVEN))
    except InvalidOperation:
        raise r.fail(obj, field, f"not an amount: {value}") from None


def _currency(r: _Reader, obj: Any, field: str) -> None:
    currency = r.get(obj, field, str)
    if currency.lower() != "usd":
        raise r.fail(obj, field, f"only USD is reconciled, got {currency!r}")


def _openai_costs(r: _Reader, bucket: Any, result: Any, day: date) -> InvoiceLine:
    amount = r.get(result, "amount", dict)
    _currency(r, amount, "currency")
    value = r.get(amount, "value", (int, Decimal))
    item = r.get(result, "line_item", str, optional=True)
    model = item.split(",", 1)[0].strip() if item else None
    return InvoiceLine("openai-costs", day, model or None, item or "total",
                       cost_nanos=_nanos(r, amount, "value", Decimal(value), Decimal(NANOS_PER_USD)))


def _openai_usage(r: _Reader, bucket: Any, result: Any, day: date) -> InvoiceLine:
    model = r.get(result, "model", str, optional=True)
    return InvoiceLine("openai-usage", day, model, model or "total",
                       input_tokens=r.count(result, "input_tokens"), output_tokens=r.count(result, "output_tokens"),
                       cached_tokens=r.count(result, "input_cached_tokens", optional=True) or 0,
                       requests=r.count(result, "num_model_requests", optional=True))


def _anthropic_cost(r: _Reader, bucket: Any, result: Any, day: date) -> InvoiceLine:
    _currency(r, result, "currency")
    text = r.get(result, "amount", (str, int, Decimal))
    try:
        cents = Decimal(text)
    except InvalidOperation:
        raise r.fail(result, "amount", f"not a decimal amount: {text!r}") from None
    model = r.get(result, "model", str, optional=True)
    item = " ".join(str(v) for v in (result.get("description") or result.get("cost_type"), result.get("token_type"))
                    if v) or "total"
    return InvoiceLine("anthropic-cost", day, model, item,
                       cost_nanos=_nanos(r, result, "amount", cents, Decimal(NANOS_PER_USD) / 100))


def _anthropic_usage(r: _Reader, bucket: Any, result: Any, day: date) -> InvoiceLine:
    creation = r.get(result, "cache_creation", dict, optional=True) or {}
    written = sum(r.count(creation, f, optional=True) or 0
                  for f in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"))
    uncached = r.count(result, "uncached_input_tokens") or 0
    read = r.count(result, "cache_read_input_tokens", optional=True) or 0
    model = r.get(result, "model", str, optional=True)
    return InvoiceLine("anthropic-usage", day, model, model or "total", input_tokens=uncached + read + written,
                       output_tokens=r.count(result, "output_tokens"), cached_tokens=read)


_PARSERS: dict[Source, tuple[Callable[[_Reader, Any], date], Callable[..., InvoiceLine]]] = {
    "openai-costs": (_unix_day, _openai_costs),
    "openai-usage": (_unix_day, _openai_usage),
    "anthropic-cost": (_rfc3339_day, _anthropic_cost),
    "anthropic-usage": (_rfc3339_day, _anthropic_usage),
}


@dataclass(frozen=True, slots=True)
class Invoice:
    path: str
    source: Source
    lines: tuple[InvoiceLine, ...]
    days: frozenset[date]  # every day with a bucket, empty ones included: "nothing that day" is a statement

    @property
    def provider(self) -> Provider:
        return "openai" if self.source.startswith("openai") else "anthropic"


def read_invoice(path: str | Path) -> Invoice:
    """One export file; ``InvoiceError`` (file, line, field) on anything unexpected."""
    path = Path(path)
    doc, text = _load(path)
    r = _Reader(str(path), text)
    source = _detect(r, doc)
    bucket_day, parse = _PARSERS[source]
    lines, days = [], set()
    for page in _pages(doc):
        for bucket in r.get(page, "data", list):
            day = bucket_day(r, bucket)
            days.add(day)
            for result in _results(r, bucket):
                lines.append(parse(r, bucket, result, day))
    return Invoice(str(path), source, tuple(lines), frozenset(days))
