"""The simulated OpenAI-compatible provider: a standalone server (``tiergate mock-upstream``) and an in-process
upstream (``SimulatedUpstream``) sharing one deterministic engine."""
