"""OpenAI's Responses API (``POST /v1/responses``): the request checked and mapped to a chat completion
(``request``), a chat completion rendered as a Response object (``response``), a chat stream as Responses events
(``events``)."""
