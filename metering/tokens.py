"""Token counting moved to ``text/`` (the bottom package): this re-export keeps old imports working."""
# shim: removed once classifiers/ has moved (lead)

from text.messages import content_text, message_text
from text.tokens import DEFAULT_MODEL, configure, count_messages, count_text, encoding_for

__all__ = ["DEFAULT_MODEL", "configure", "content_text", "count_messages", "count_text", "encoding_for",
           "message_text"]
