"""``tiergate`` command line: serve, check-config, and the subcommands each package contributes."""

from __future__ import annotations

import argparse
import sys

from router.config_loader import ConfigError, load_policy


def _check_config(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.path)
    except ConfigError as exc:
        print(f"{args.path}: invalid ({len(exc.issues)} error{'s' if len(exc.issues) != 1 else ''})", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    tiers = ", ".join(f"{t.name} ({len(t.deployments)} deployment{'s' if len(t.deployments) != 1 else ''})" for t in policy.tiers)
    print(f"{args.path}: ok (sha256 {policy.sha256[:12]}): tiers {tiers}; teams {', '.join(policy.teams)}")
    for warning in policy.warnings:
        print(f"  warning: {warning}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from proxy.server import serve

    try:
        load_policy(args.config)  # fail fast, with file/line/field, before any worker starts
    except ConfigError as exc:
        print(f"{args.config}: invalid config\n{exc}", file=sys.stderr)
        return 1
    return serve(args.config, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiergate", description="OpenAI-compatible LLM proxy with cost-aware routing")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", required=True, help="policy YAML (see configs/)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)

    check = sub.add_parser("check-config", help="validate a policy file; errors name file, line and field")
    check.add_argument("path")
    check.set_defaults(func=_check_config)

    from classifiers.cli import add_commands as classifier_commands
    from metering.cli import add_commands as metering_commands
    from proxy.audit_cli import add_commands as audit_commands
    from simulator.cli import add_commands as simulator_commands

    simulator_commands(sub)
    classifier_commands(sub)
    metering_commands(sub, _ledger_location)
    audit_commands(sub)
    return parser


def _ledger_location(path: str) -> tuple[str, str]:
    try:
        metering = load_policy(path).config.metering
        return metering.ledger, metering.ledger_schema
    except ConfigError as exc:
        raise ValueError(f"{path}: invalid config\n{exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
