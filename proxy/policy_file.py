"""How the CLI commands load a policy file: the policy, or every issue printed once, the same way everywhere.

Why one function: ``check-config``, ``serve``, ``plan``, ``audit`` and ``experiments`` each printed a bad file in its
own format (some the issue list, some the exception text, one a different heading), so the operator saw a different
message for the same mistake depending on the command.
"""

from __future__ import annotations

import sys

from router.config_loader import ConfigError, load_policy
from router.policy import Policy


def load_or_report(path: str, prog: str = "tiergate") -> Policy | None:
    """The policy at ``path``; None after printing ``<prog>: <path>: invalid config (N errors)`` and each issue (file
    line and field) to stderr. Callers choose the exit status."""
    try:
        return load_policy(path)
    except ConfigError as exc:
        count = len(exc.issues)
        print(f"{prog}: {path}: invalid config ({count} error{'s' if count != 1 else ''})", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None
