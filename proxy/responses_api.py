"""HTTP endpoints of OpenAI's Responses API (``/v1/responses``), each in its own module: ``create`` (the ingress
over ``wire.responses``) in ``proxy.responses_create``; ``retrieve``, ``delete`` and ``input_items`` (the stored
responses of ``kvcache.responses``) in ``proxy.responses_stored``."""

from __future__ import annotations

from proxy.responses_create import create
from proxy.responses_stored import delete, input_items, retrieve

__all__ = ["create", "delete", "input_items", "retrieve"]
