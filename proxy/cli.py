"""``tiergate`` command line: serve, check-config, and the subcommands each package contributes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from proxy.policy_file import load_or_report
from text.tokens import configure as configure_text


def _check_config(args: argparse.Namespace) -> int:
    policy = load_or_report(args.path, "tiergate check-config")
    if policy is None:
        return 1
    tiers = ", ".join(f"{t.name} ({len(t.deployments)} deployment{'s' if len(t.deployments) != 1 else ''})"
                      for t in policy.tiers)
    print(f"{args.path}: ok (sha256 {policy.sha256[:12]}): tiers {tiers}; teams {', '.join(policy.teams)}")
    for warning in policy.warnings:
        print(f"  warning: {warning}")
    if args.fail_over_budget:
        from proxy.experiments_cli import check_budgets

        return check_budgets(policy, args.path)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from proxy.server import PortInUse, ServeOptions, serve

    if load_or_report(args.config, "tiergate serve") is None:  # fail fast, before any worker starts
        return 1
    options = ServeOptions(config_path=args.config, host=args.host, port=args.port, workers=args.workers,
                           log_level=args.log_level, shutdown_grace_s=args.shutdown_grace_s)
    try:
        return serve(options)
    except PortInUse as exc:
        print(f"tiergate serve: {exc}", file=sys.stderr)
        return 1


def _number(kind: type[int] | type[float], low: float, high: float = float("inf")) -> Callable[[str], int | float]:
    """An argparse type: a usage error, not a traceback, for a value out of range."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}" if high < float("inf")
                                             else f"must be at least {low:g}")
        return value
    return parse


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the proxy",
                           description="Run the proxy. SIGHUP or a change of the file reloads the policy; "
                                       "SIGTERM or SIGINT drains and stops.")
    serve.add_argument("--config", required=True, metavar="PATH",
                       help="policy YAML, required (see configs/; check it with tiergate check-config)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=_number(int, 0, 65535), default=4000,
                       help="TCP port; start-up fails if anything else holds it (default: %(default)s)")
    serve.add_argument("--workers", type=_number(int, 1), default=1,
                       help="worker processes; the kernel balances connections across them, each keeps its own "
                            "event loop and in-process state (default: %(default)s)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="log level (default: %(default)s)")
    serve.add_argument("--shutdown-grace-s", type=_number(float, 0.1), default=10.0, metavar="SECONDS",
                       help="how long SIGTERM/SIGINT may take: in-flight requests get most of it to finish, then "
                            "the process exits even if work remains (ledger records not yet committed stay in the "
                            "spool for the next start) (default: %(default)s)")
    serve.set_defaults(func=_serve)


def _add_check_config(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser("check-config", help="validate a policy file; errors name file, line and field")
    check.add_argument("path")
    check.add_argument("--fail-over-budget", action="store_true",
                       help="also exit 1 naming each experiment whose projected cost at expiry (from its ledger "
                            "spend) exceeds its budget")
    check.set_defaults(func=_check_config)


def _add_mock_upstream(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from simulator.cli import add_commands as simulator_commands

    simulator_commands(sub)


# Commands parsed without the others: building every command's parser imports the analysis commands' modules
# (numpy, onnxruntime, the ledger's readers, aiohttp, ...), ~0.6 s of CPU and ~50 MB that `serve` (above all its
# supervisor, which never loads the app), `check-config` and `mock-upstream` have no use for.
_STANDALONE = {"serve": _add_serve, "check-config": _add_check_config, "mock-upstream": _add_mock_upstream}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``only`` (a key of ``_STANDALONE``) of that command alone."""
    parser = argparse.ArgumentParser(prog="tiergate", description="OpenAI-compatible LLM proxy with cost-aware routing")
    sub = parser.add_subparsers(dest="command", required=True)
    if only is not None:
        _STANDALONE[only](sub)
        return parser

    _add_serve(sub)
    _add_check_config(sub)

    from classifiers.cli import add_commands as classifier_commands
    from metering.cli import add_commands as metering_commands
    from proxy.audit_cli import add_commands as audit_commands
    from proxy.experiments_cli import add_commands as experiment_commands
    from proxy.models_cli import add_team_options as team_model_options
    from proxy.plan_cli import add_commands as plan_commands

    _add_mock_upstream(sub)
    classifier_commands(sub)
    team_model_options(sub)
    metering_commands(sub)
    audit_commands(sub)
    experiment_commands(sub)
    plan_commands(sub)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed. A standalone command is parsed by its own parser: its help, its usage errors and the
    namespace are the whole parser's; an argument it leaves over goes to the whole parser, which reports it with
    the usage that lists every command."""
    if argv and argv[0] in _STANDALONE:
        args, rest = build_parser(only=argv[0]).parse_known_args(argv)
        if not rest:
            return args
    return build_parser().parse_args(argv)


# Top-level modules only the `train` extra installs (requirements-train.lock); `serve` never imports them.
TRAIN_ONLY_MODULES = frozenset({"sklearn", "skl2onnx", "onnx", "scipy"})


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    configure_text()  # tiktoken's offline files, before any command counts a token
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in TRAIN_ONLY_MODULES:
            raise
        print(f"tiergate {args.command}: needs the train extra ({exc.name} is not installed): "
              f"bash scripts/install.sh train", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
