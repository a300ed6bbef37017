"""A minimal policy file for the FinOps command tests: a ledger, tiers priced by the simulator, and the teams."""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

TIERS = {"small": "gpt-4o-mini", "frontier": "o1"}


def policy_file(path: Path, db: Path, teams: str, metering_extra: str = "") -> Path:
    """``teams`` is the YAML body under ``teams:`` (indented two spaces); key hashes may be any 64 hex digits."""
    tiers = "".join(f"  - name: {name}\n    deployments: [{{id: {name}-0, model: simulated/{model}}}]\n"
                    for name, model in TIERS.items())
    path.write_text(f"metering:\n  ledger: sqlite:///{db}\n{metering_extra}classifier:\n  model: length\n"
                    f"tiers:\n{tiers}teams:\n{teams}")
    return path


def tiergate(*args: object) -> subprocess.CompletedProcess[str]:
    """``tiergate ARGS`` run by the CLI's own ``main`` in this process (a subprocess per call costs seconds of
    imports); exit code, stdout and stderr as a subprocess would give them (``python -m proxy.cli`` is
    ``raise SystemExit(main())``: the same code path). Log records go to the test's log capture, not to ``stderr``."""
    from proxy.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse rejecting an argument
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:  # SystemExit("message"): Python prints the message and exits 1
                print(exc.code, file=err)
                code = 1
    return subprocess.CompletedProcess([str(a) for a in args], code, out.getvalue(), err.getvalue())
