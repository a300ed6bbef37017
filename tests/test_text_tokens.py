"""text.tokens loads the shipped encodings itself (a faster parse of the same file): the result must be tiktoken's
to the byte and rank, a corrupted file must be refused, and a file missing from an operator's cache directory is
still tiktoken's to fetch."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public  # type: ignore[import-untyped]  # tiktoken's plugin package: no py.typed

from text import tokens
from text.tokens import ENCODINGS_DIR, SHIPPED_ENCODINGS


def _tiktokens(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``tiktoken.get_encoding(name)`` constructs the encoding from (its registry caches the result, and
    text.tokens shares that cache, so the reference is built here from tiktoken's own constructor and loader)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(ENCODINGS_DIR))
    constructors: dict[str, Callable[[], dict[str, Any]]] = tiktoken_ext.openai_public.ENCODING_CONSTRUCTORS
    return constructors[name]()


@pytest.mark.parametrize("name", [*SHIPPED_ENCODINGS, "o200k_harmony"])
def test_fast_load_is_tiktokens_encoding(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _tiktokens(name, monkeypatch)
    loaded = tokens._openai_constructors()[name]()
    # name, pat_str, special tokens, explicit_n_vocab where tiktoken sets one, and every rank, in file order: the
    # same arguments to tiktoken.Encoding make the same encoder (building two here would only add ~0.5 s each)
    assert loaded == expected
    assert list(loaded["mergeable_ranks"].items()) == list(expected["mergeable_ranks"].items())


def test_encoding_for_shares_tiktokens_registry() -> None:
    """Code that asks tiktoken by name (simulator/text.py) gets the encoding already loaded, not a second copy."""
    assert tokens.encoding_for("gpt-4o") is tiktoken.get_encoding("o200k_base")
    assert tokens.encoding_for("gpt-4") is tiktoken.get_encoding("cl100k_base")


def test_a_corrupted_file_is_refused_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken"
    cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    shutil.copyfile(ENCODINGS_DIR / cached.name, cached)
    data = bytearray(cached.read_bytes())
    data[100] ^= 1  # one bit (a rank 13 becomes 12): the file still parses, only its hash tells
    cached.write_bytes(bytes(data))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=f"{cached}.* does not match its sha256"):
        tokens._openai_constructors()["p50k_base"]()
    assert cached.read_bytes() == bytes(data)  # not deleted, as tiktoken would, to download it again


def test_a_file_missing_from_the_cache_is_tiktokens_to_fetch(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's own TIKTOKEN_CACHE_DIR without the file: tiktoken downloads and caches it, as before."""
    url = "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken"
    name = hashlib.sha1(url.encode()).hexdigest()
    fetched: list[str] = []

    def download(blobpath: str) -> bytes:
        fetched.append(blobpath)
        return (ENCODINGS_DIR / name).read_bytes()

    monkeypatch.setattr(tiktoken.load, "read_file", download)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    loaded = tokens._openai_constructors()["p50k_base"]()
    assert fetched == [url]
    assert (tmp_path / name).read_bytes() == (ENCODINGS_DIR / name).read_bytes()
    assert loaded == _tiktokens("p50k_base", monkeypatch)
