"""Refresh the data tiergate ships from litellm, so the runtime install needs neither litellm nor the network.

    .venv/bin/python scripts/vendor_litellm_data.py      # after bumping litellm (the `providers` extra) and
                                                         # `bash scripts/install.sh providers` (or test.sh)

Copies from the installed litellm:
  - its bundled price table (model_prices_and_context_window_backup.json, MIT, (c) Berri AI) to
    metering/data/model_prices_and_context_window.json, byte for byte, with its licence beside it;
  - the tiktoken BPE files it bundles for the encodings ``text.tokens`` counts with (SHIPPED_ENCODINGS) to
    text/encodings/, under the names tiktoken gives its cache files (sha1 of the file's URL), so pointing
    ``TIKTOKEN_CACHE_DIR`` there makes tiktoken read them and never download. Each file is read through tiktoken
    itself, which checks it against the sha256 it expects for that encoding.
Then records where it all came from in metering/data/SOURCE.md. Commit the changed files with the lock bump.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from metering.prices import TABLE_PATH
from text.tokens import ENCODINGS_DIR, SHIPPED_ENCODINGS


def _litellm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("litellm is not installed: bash scripts/install.sh providers (or bash scripts/test.sh) first")
    return Path(next(iter(spec.submodule_search_locations)))


def _blob_urls(tokenizer_dir: Path) -> dict[str, str]:
    """Encoding name -> the URL tiktoken loads it from, learnt by loading it from litellm's copies (offline)."""
    os.environ["TIKTOKEN_CACHE_DIR"] = str(tokenizer_dir)
    import tiktoken
    import tiktoken.load

    seen: list[str] = []
    original = tiktoken.load.read_file_cached

    def recording(blobpath: str, expected_hash: str | None = None) -> bytes:
        seen.append(blobpath)
        return original(blobpath, expected_hash)  # checks the sha256 tiktoken expects

    tiktoken.load.read_file_cached = recording  # type: ignore[assignment]
    try:
        urls = {}
        for name in SHIPPED_ENCODINGS:
            seen.clear()
            tiktoken.get_encoding(name)
            if len(seen) != 1:
                sys.exit(f"{name}: expected tiktoken to read one file, it read {seen}")
            urls[name] = seen[0]
        return urls
    finally:
        tiktoken.load.read_file_cached = original  # type: ignore[assignment]


def main() -> None:
    source = _litellm_dir()
    version = importlib.metadata.version("litellm")
    data_dir = TABLE_PATH.parent
    data_dir.mkdir(parents=True, exist_ok=True)

    table = source / "model_prices_and_context_window_backup.json"
    json.loads(table.read_text(encoding="utf-8"), parse_float=Decimal)  # refuse to ship a broken table
    shutil.copyfile(table, TABLE_PATH)
    licence = importlib.metadata.distribution("litellm").locate_file(f"litellm-{version}.dist-info/licenses/LICENSE")
    shutil.copyfile(Path(str(licence)), data_dir / "LICENSE-litellm")

    tokenizer_dir = source / "litellm_core_utils" / "tokenizers"
    ENCODINGS_DIR.mkdir(parents=True, exist_ok=True)
    for old in ENCODINGS_DIR.iterdir():
        if len(old.name) == 40:  # a cache file of an earlier refresh
            old.unlink()
    lines = []
    for name, url in _blob_urls(tokenizer_dir).items():
        key = hashlib.sha1(url.encode()).hexdigest()  # tiktoken's cache file name (tiktoken.load.read_file_cached)
        shutil.copyfile(tokenizer_dir / key, ENCODINGS_DIR / key)
        digest = hashlib.sha256((ENCODINGS_DIR / key).read_bytes()).hexdigest()
        lines.append(f"| `text/encodings/{key}` | {name} | {url} | `{digest}` |")

    (data_dir / "SOURCE.md").write_text(
        "# Data vendored from litellm\n\n"
        f"Copied from litellm {version} (MIT licence, Copyright (c) 2023 Berri AI: "
        "`LICENSE-litellm` beside this file)\n"
        "by `scripts/vendor_litellm_data.py`, so that the runtime install carries no litellm (~300 MB with its\n"
        "dependencies) and reads prices and tokenizers offline. "
        "Refresh after bumping litellm: run the script, commit.\n\n"
        "- `model_prices_and_context_window.json`: litellm's bundled `model_prices_and_context_window_backup.json`,\n"
        "  byte for byte (`metering.prices` reads it; prices are parsed as Decimal).\n"
        "- tiktoken BPE files that litellm bundles (OpenAI's published encodings; tiktoken is MIT, Copyright (c) 2022\n"
        "  OpenAI), named as tiktoken names its cache files (sha1 of the URL) "
        "so that `text.tokens.configure()` can point\n"
        "  `TIKTOKEN_CACHE_DIR` at them; tiktoken checks each against the sha256 below before use:\n\n"
        "| file | encoding | URL tiktoken would download | sha256 |\n| --- | --- | --- | --- |\n"
        + "\n".join(lines) + "\n",
        encoding="utf-8",
    )
    print(f"vendored litellm {version}: {TABLE_PATH.relative_to(ROOT)}, {len(lines)} encodings in "
          f"{ENCODINGS_DIR.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
