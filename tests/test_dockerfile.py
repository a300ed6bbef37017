"""No Docker engine runs here, so the Dockerfile is kept honest by parsing it against the repo."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

from tests.conftest import ROOT


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_slim_non_root_with_healthcheck() -> None:
    ins = _instructions()
    assert ins[0][0] == "FROM" and "slim" in ins[0][1]
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert any(word == "HEALTHCHECK" and "/healthz" in rest for word, rest in ins)
    assert ("EXPOSE", "4000") in ins


def test_dockerfile_installs_from_the_hashed_lock_and_copies_real_paths() -> None:
    ins = _instructions()
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "--require-hashes -r requirements.lock" in runs
    copied = set()
    for word, rest in ins:
        if word == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"
                copied.add(source)
    # `pip install .` in the image packages only what was copied: every package pyproject lists must be
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert {p.rstrip("*") for p in packages["include"]} <= copied
    entry = json.loads(next(rest for word, rest in ins if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in ins if word == "CMD"))
    assert entry == ["tiergate"] and cmd[0] == "serve"
    config = cmd[cmd.index("--config") + 1]
    assert (ROOT / config).is_file()
    assert re.search(r"^tiergate = ", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)


# -- the four hash-pinned layers (scripts/lock.sh) ----------------------------------------------------------------

LOCKS = {"runtime": "requirements.lock", "providers": "requirements-providers.lock",
         "train": "requirements-train.lock", "dev": "requirements-dev.lock"}
# Heavy packages that must never reach the runtime install (scripts/install.sh, scripts/demo.sh): training and test
# tools, and litellm with what only it pulls in (~300 MB: the `providers` layer).
NOT_RUNTIME = {"scikit-learn", "scipy", "skl2onnx", "onnx", "pytest", "hypothesis", "playwright", "mypy", "ruff",
               "litellm", "boto3", "botocore", "huggingface-hub", "tokenizers", "openai"}


def _lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``{package: (version, hashes)}`` of a lock file."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", (ROOT / name).read_text()):
        head = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", block)
        if head:
            out[_norm(head.group(1))] = (head.group(2), frozenset(re.findall(r"sha256:[0-9a-f]{64}", block)))
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}  # type: ignore[union-attr]


def test_the_runtime_lock_holds_what_serve_needs_and_nothing_to_train_or_test() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locks = {layer: _lock(path) for layer, path in LOCKS.items()}
    runtime = locks["runtime"]
    assert _names(project["dependencies"]) <= runtime.keys()
    assert not NOT_RUNTIME & runtime.keys()
    extras = project["optional-dependencies"]
    for layer in ("providers", "train", "dev"):
        assert _names(r for r in extras[layer] if not r.startswith("tiergate[")) <= locks[layer].keys(), layer
        # Each layer lock is the runtime plus its extra, cut from one resolution: shared pins agree exactly.
        assert runtime.keys() <= locks[layer].keys()
    for a, b in (("train", "dev"), ("providers", "dev"), ("providers", "train")):
        for name in locks[a].keys() & locks[b].keys():
            assert locks[a][name] == locks[b][name], (a, b, name)
    # The tests of litellm-served deployments run on the dev layer: it holds the whole providers layer.
    assert "tiergate[providers]" in extras["dev"] and locks["providers"].keys() <= locks["dev"].keys()
    for pins in locks.values():
        assert all(hashes for _, hashes in pins.values())  # --require-hashes installs need every hash


def test_runtime_installs_take_the_runtime_lock_only_and_tests_take_all_three() -> None:
    runs = " ".join(rest for word, rest in _instructions() if word in {"RUN", "COPY"})
    assert "requirements-train" not in runs and "requirements-dev" not in runs and "[dev]" not in runs
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert re.search(r"^bash scripts/install\.sh$", demo, re.MULTILINE)
    test = (ROOT / "scripts" / "test.sh").read_text()
    assert re.search(r"^bash scripts/install\.sh train dev$", test, re.MULTILINE)
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "runtime) echo requirements.lock" in install
    assert 'providers|train|dev) echo "requirements-$1.lock"' in install
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec bash scripts/test\.sh$", ci, re.MULTILINE)


def test_the_image_has_providers_by_default_and_a_lean_build_without() -> None:
    """configs/default.yaml (the image's production example) has an anthropic/ deployment, which only litellm
    serves: the default build installs the providers layer; ``--build-arg PROVIDERS=no`` leaves it out."""
    ins = _instructions()
    assert ("ARG", "PROVIDERS=yes") in ins
    run = next(rest for word, rest in ins if word == "RUN" and "requirements.lock" in rest)
    for value, with_providers in (("yes", True), ("no", False)):
        # the RUN line as /bin/sh runs it, with pip swapped for echo
        script = run.replace("pip install", "echo")
        out = subprocess.run(["sh", "-c", script], env={"PROVIDERS": value, "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, check=True).stdout
        assert "--require-hashes -r requirements.lock" in out
        assert ("-r requirements-providers.lock" in out) is with_providers, (value, out)
    default = (ROOT / "configs" / "default.yaml").read_text()
    assert "model: anthropic/" in default
