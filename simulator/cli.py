"""``tiergate mock-upstream``: registered into the main CLI by ``proxy/cli.py`` through ``add_commands``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from simulator.options import FAIL_KINDS, SimulatorOptions
from text.tokens import configure as configure_text


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be within [0, 1]")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def add_commands(subparsers: Any) -> None:
    """Add ``mock-upstream`` to the main parser's subcommands (``subparsers`` from ``add_subparsers``)."""
    parser = subparsers.add_parser(
        "mock-upstream",
        help="run the simulated upstream (OpenAI chat/completions/embeddings/responses, Anthropic messages)",
        description="A standalone simulated LLM server speaking OpenAI's chat completions, completions, embeddings "
        "and Responses API and Anthropic's Messages API (/v1/messages), with deterministic replies, each provider's "
        "usage and prompt caching (automatic prefixes for OpenAI, cache_control breakpoints for Anthropic), pacing "
        "and failure injection. Tests and benchmarks use it as the far end.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--latency-ms", type=_non_negative, default=0.0, help="delay of a whole non-streamed reply")
    parser.add_argument("--ttft-ms", type=_non_negative, default=0.0, help="delay before a stream's first chunk")
    parser.add_argument("--tokens-per-s", type=_non_negative, default=0.0, help="stream pacing (0: unpaced)")
    parser.add_argument("--fail-rate", type=_rate, default=0.0, help="share of requests that fail, in [0, 1]")
    parser.add_argument("--fail-kind", choices=FAIL_KINDS, default="mixed", help="what an injected failure is")
    parser.add_argument("--fail-first", type=int, default=0, help="fail the first N requests regardless of rate")
    parser.add_argument("--fail-seed", type=int, default=0, help="seed of the failure draw (same seed, same run)")
    parser.add_argument("--hang-s", type=_non_negative, default=300.0, help="how long a simulated timeout hangs")
    parser.add_argument("--workers", type=int, default=1)
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    return SimulatorOptions(
        latency_ms=args.latency_ms, ttft_ms=args.ttft_ms, tokens_per_s=args.tokens_per_s, fail_rate=args.fail_rate,
        fail_kind=args.fail_kind, fail_first=args.fail_first, fail_seed=args.fail_seed, hang_s=args.hang_s,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; exit status 0."""
    from simulator.server import serve  # deferred: uvicorn is not needed to build the parser

    print(f"tiergate mock-upstream listening on http://{args.host}:{args.port}/v1", flush=True)
    serve(args.host, args.port, options_from_args(args), workers=args.workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m simulator`` runs the mock without the main CLI (handy before ``proxy/cli.py`` exists)."""
    parser = argparse.ArgumentParser(prog="tiergate")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["mock-upstream", *(sys.argv[1:] if argv is None else argv)])
    configure_text()  # tiktoken's offline files, before the first count
    return int(args.func(args))
