"""Calling deployments: one client per deployment behind a provider registry (pooled OpenAI-wire HTTP, litellm
for the rest, and whatever registers itself, such as the simulator), the dispatcher that walks a decision's
plan with fallbacks, and the per-deployment health and load that the router reads as a snapshot."""
