"""No Docker engine runs here, so the Dockerfile is kept honest by parsing it against the repo."""

from __future__ import annotations

import json
import re

from conftest import ROOT


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
    for word, rest in ins:
        if word == "COPY":
            source = rest.split()[0]
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"
    entry = json.loads(next(rest for word, rest in ins if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in ins if word == "CMD"))
    assert entry == ["tiergate"] and cmd[0] == "serve"
    config = cmd[cmd.index("--config") + 1]
    assert (ROOT / config).is_file()
    assert re.search(r"^tiergate = ", (ROOT / "pyproject.toml").read_text(), re.M)
