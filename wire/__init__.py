"""The wire formats besides OpenAI's chat completions: OpenAI's Responses API and Anthropic's Messages API.

Each format is checked, mapped to the pipeline's canonical (OpenAI chat-shaped) request, and its answers and streams
are rendered back, with no HTTP: the proxy's endpoints are the thin layer that calls these. No routing, trimming,
caching or metering happens here; that is the one pipeline's work whatever the format.
"""
