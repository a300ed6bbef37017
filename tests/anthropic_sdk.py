"""The anthropic SDK, imported when a test first uses it rather than when pytest collects the test module.

Why: ``import anthropic`` builds its pydantic types, ~2.2 s of CPU, and every xdist worker collects every test
module. The modules that use the SDK carry ``GROUP`` (one xdist group), so one worker pays for the import instead of
each of the four. ``anthropic.Anthropic(...)``, ``anthropic.NotFoundError`` and the like work as with the module.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

GROUP = pytest.mark.xdist_group("anthropic-sdk")


class _Lazy:
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # probes by pytest, hypothesis, copy or pickle: they must not import the SDK
            raise AttributeError(name)
        return getattr(importlib.import_module("anthropic"), name)


anthropic: Any = _Lazy()
