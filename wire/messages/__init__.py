"""Anthropic's Messages API (``/v1/messages``, the anthropic SDK's and Claude Code's format): requests to the
canonical chat body (``request``), chat answers to Messages (``response``), chat chunk streams to Anthropic's events
(``events``), and ``count_tokens`` (``tokens``)."""
