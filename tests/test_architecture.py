"""The package graph read from the source (every import statement, at module level or inside a function): it has
no cycle and flows one way, proxy -> pipeline -> router / upstream / metering -> text, as ARCHITECTURE.md draws
it; the router imports no network client, no HTTP and no simulator; text/ imports nothing of ours and changes
nothing at import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A package may import only packages of a lower rank: that rules out cycles and backward flow at once.
RANK = {
    "text": 0,  # token counting and message text: the bottom
    "metering": 1,  # prices, usage, budgets, the ledger
    "classifiers": 1,  # features and the ONNX model: no teams, no money
    "kvcache": 2,  # TTL caches (Redis connection settings from metering)
    "router": 3,  # pure decisions; scores through classifiers, prices through metering
    "upstream": 4,  # clients behind the provider registry; reads the router's deployment specs
    "pipeline": 5,  # the request's steps
    "wire": 6,  # the Responses and Messages formats: checked, mapped to the pipeline's request, rendered back
    "simulator": 7,  # a provider that registers itself into upstream/ (and speaks the wire formats natively)
    "proxy": 8,  # the edge; the CLI also starts the simulator
}
# Files whose imports break the ranks today, each with who removes it; an entry whose file no longer breaks them
# fails the test too, so the list only shrinks.
KNOWN_EXCEPTIONS = {
    # the FinOps CLI reads a policy file through the router's loader and the pipeline's (formerly the proxy's)
    # budget mapping, lazily and off the request path: still a metering -> pipeline -> metering cycle; the view
    # belongs to the CLI layer (helper I's area)
    "metering/finops/policy_view.py": "metering -> router, pipeline",
}
# Third-party packages that do I/O or speak HTTP: none may reach the pure router, and the pipeline knows no HTTP.
NETWORK = {"aiohttp", "httpx", "litellm", "requests", "redis", "asyncpg", "psycopg", "starlette", "fastapi", "uvicorn"}
HTTP = {"starlette", "fastapi", "uvicorn"}


def _imports() -> dict[str, set[tuple[str, str]]]:
    """package -> {(imported module, importing file)} for every absolute import in the package's files."""
    found: dict[str, set[tuple[str, str]]] = {name: set() for name in RANK}
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue  # relative imports stay inside the package
                found[package] |= {(module, str(path.relative_to(ROOT))) for module in modules}
    return found


IMPORTS = _imports()


def _ours(module: str) -> str | None:
    top = module.partition(".")[0]
    return top if top in RANK else None


def test_packages_import_only_lower_layers() -> None:
    seen_exceptions = set()
    wrong = []
    for package, imports in IMPORTS.items():
        for module, path in sorted(imports):
            target = _ours(module)
            if target is None or target == package or RANK[target] < RANK[package]:
                continue
            if path in KNOWN_EXCEPTIONS:
                seen_exceptions.add(path)
                continue
            wrong.append(f"{path} imports {module} ({package} may not import {target})")
    assert not wrong, "\n".join(wrong)
    assert seen_exceptions == set(KNOWN_EXCEPTIONS), f"fixed, remove: {set(KNOWN_EXCEPTIONS) - seen_exceptions}"


def test_the_graph_without_exceptions_has_no_cycle() -> None:
    """Redundant with the ranks, but says it directly (and names the cycle if the ranks are ever loosened)."""
    edges = {package: {_ours(m) for m, path in imports if path not in KNOWN_EXCEPTIONS} - {None, package}
             for package, imports in IMPORTS.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):  # type: ignore[type-var]
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(trail + [node, nxt])}"
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for package in RANK:
        if package not in state:
            visit(package, [])


def test_router_is_pure_and_pipeline_knows_no_http() -> None:
    def third_party(package: str, banned: set[str]) -> list[str]:
        return [f"{path} imports {module}" for module, path in sorted(IMPORTS[package])
                if module.partition(".")[0] in banned]

    assert not third_party("router", NETWORK | {"simulator", "upstream", "opentelemetry"})
    assert not third_party("pipeline", HTTP)
    assert not third_party("wire", NETWORK)  # formats are data: the proxy does the HTTP, the pipeline the I/O
    assert not third_party("text", set(RANK) - {"text"})  # nothing of ours (also implied by its rank)
    # decide() and its steps read no clock: time reaches them only through the health snapshot
    clocks = [(module, path) for module, path in IMPORTS["router"]
              if path in {"router/decide.py", "router/ordering.py", "router/health_snapshot.py"}
              and module in {"time", "datetime"}]
    assert not clocks


def test_text_configures_tiktoken_only_when_asked() -> None:
    """Importing text/ (and what imports it) leaves the environment alone; ``configure()`` points tiktoken at
    the encodings text/ ships, keeps an operator's own TIKTOKEN_CACHE_DIR, and counting works offline after it."""
    code = (
        "import os\n"
        "import text.tokens, router.features, simulator.engine, metering.usage\n"
        "assert 'TIKTOKEN_CACHE_DIR' not in os.environ, 'changed at import'\n"
        "text.tokens.configure()\n"
        "path = os.environ['TIKTOKEN_CACHE_DIR']\n"
        "assert path == str(text.tokens.ENCODINGS_DIR) and os.path.isdir(path), path\n"
        "assert text.tokens.count_text('hello world') == 2\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    own = "import os, text.tokens; text.tokens.configure(); print(os.environ['TIKTOKEN_CACHE_DIR'])"
    run = subprocess.run([sys.executable, "-c", own], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**env, "TIKTOKEN_CACHE_DIR": "/srv/tiktoken"})
    assert run.stdout.strip() == "/srv/tiktoken", run.stderr
