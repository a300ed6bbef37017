"""``tiergate learn --team T --config FILE`` and ``tiergate calibrate --team T --config FILE``: the team-model forms
of the classifier commands, added to their parsers here because they need the ledger and the router (which the
classifiers package, below both, must not import).

``learn --team`` first runs the watch (the team's promoted model against the version it replaced on judged rows
newer than its promotion; rolled back if worse beyond noise), then retrains from the team's judged rows (the
ledger's outcome store, else ``--outcomes``), registers the candidate and promotes it if the gate says so.
``calibrate --team`` prints the highest threshold (fewest calls to the ceiling tier) at which the team's serving
model keeps judged quality at the target share of the ceiling's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from classifiers import calibrate
from classifiers.learn import LearnError
from classifiers.promotion import DEFAULT_CONFIDENCE, DEFAULT_MARGIN, DEFAULT_MIN_HOLDOUT, model_inputs
from classifiers.scorer import ComplexityScorer
from metering.ledger import Ledger, open_ledger
from pipeline.team_models import retrain, serving_bytes, team_outcomes


def _fail(command: str, message: str) -> int:
    print(f"tiergate {command}: {message}", file=sys.stderr)
    return 2


async def _with_ledger(config: str, action: Callable[[Ledger], Any]) -> Any:
    from metering.finops.policy_view import load_view

    view = load_view(config)
    # No spool: a CLI process must neither create segments nor replay a running proxy's.
    ledger = open_ledger(view.ledger_url, spool_dir=None, schema=view.ledger_schema)
    await ledger.start()
    try:
        return await action(ledger)
    finally:
        await ledger.close()


def _learn_team(args: argparse.Namespace) -> int:
    async def go(ledger: Ledger) -> str:
        data = await team_outcomes(ledger, args.team, args.outcomes)
        done = await retrain(ledger, args.team, data, seed=args.seed, margin=args.margin, min_holdout=args.min_holdout,
                             confidence=args.confidence, watch_first=True)
        held = done.model.metrics["holdout_apgr"]
        watched = "" if done.watched is None else f"watch of v{done.watched.version}: {done.watched.reason}\n"
        return (f"{watched}team {args.team}: registered v{done.model.version} (model id {done.model.model_id}), "
                f"{'PROMOTED' if done.promoted else 'kept as candidate'}: {done.reason}\n"
                f"held-out APGR candidate {held['candidate']:.4f}, current {held['current']:.4f} "
                f"on {done.model.metrics['n_holdout']} newest of {done.model.metrics['n_rows']} rows")

    try:
        print(asyncio.run(_with_ledger(args.config, go)))
    except (LearnError, ValueError, OSError) as exc:
        return _fail("learn", str(exc).splitlines()[0])
    return 0


def _calibrate_team(args: argparse.Namespace) -> int:
    if args.target_quality is None:
        return _fail("calibrate", "--team needs --target-quality")

    async def go(ledger: Ledger) -> str:
        data = await team_outcomes(ledger, args.team, args.data)
        model, version = await serving_bytes(ledger, args.team)
        scorer = ComplexityScorer(model)
        scores = scorer.probabilities(model_inputs(scorer, data))
        threshold = calibrate.threshold_for_quality(scores, data.weak, data.strong, args.target_quality)
        q = calibrate.routed_quality(scores, data.weak, data.strong, threshold)
        share = calibrate.strong_share(scores, threshold)
        serving = f"v{version}" if version is not None else "the default model"
        return (f"# team {args.team}, {serving} ({scorer.model_id}), {len(data.ids)} judged rows: routed quality "
                f"{q:.4f} = {q / float(data.strong.mean()):.1%} of the ceiling tier's {data.strong.mean():.4f} "
                f"(target {args.target_quality:.0%}), {share:.1%} of requests reach {args.tier}\n"
                + calibrate.policy_yaml(args.tier, threshold))

    try:
        print(asyncio.run(_with_ledger(args.config, go)), end="")
    except (LearnError, ValueError, OSError) as exc:
        return _fail("calibrate", str(exc).splitlines()[0])
    return 0


def _team_or(original: Callable[[argparse.Namespace], int], team: Callable[[argparse.Namespace], int],
             needs: tuple[str, ...], command: str) -> Callable[[argparse.Namespace], int]:
    def dispatch(args: argparse.Namespace) -> int:
        if args.team is not None:
            if args.config is None:
                return _fail(command, "--team needs --config (the policy naming the ledger)")
            return team(args)
        missing = [f"--{n.replace('_', '-')}" for n in needs if getattr(args, n) is None]
        if missing:
            return _fail(command, f"{' and '.join(missing)} required (or --team with --config)")
        return original(args)

    return dispatch


def add_team_options(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``--team``/``--config`` to the ``learn`` and ``calibrate`` parsers ``classifiers.cli`` registered."""
    learn, cal = subparsers.choices["learn"], subparsers.choices["calibrate"]
    for parser in (learn, cal):
        parser.add_argument("--team", default=None, help="work on this team's models and judged rows in the ledger")
        parser.add_argument("--config", default=None, help="policy file naming the ledger (with --team)")
    learn.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                       help="held-out APGR the candidate must gain over the serving model to be promoted")
    learn.add_argument("--min-holdout", type=int, default=DEFAULT_MIN_HOLDOUT,
                       help="held-out rows (newest 25%%) needed to promote")
    learn.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE,
                       help="paired-bootstrap interval whose lower bound must be above 0 to promote (0: margin only)")
    learn.set_defaults(func=_team_or(learn.get_default("func"), _learn_team, ("outcomes", "out"), "learn"))
    cal.set_defaults(func=_team_or(cal.get_default("func"), _calibrate_team, ("data",), "calibrate"))
