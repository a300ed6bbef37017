"""The promotion gate's default thresholds, in a module of their own (no numpy) so the policy's ``learning:``
settings can default to them without loading the training path (``classifiers.promotion`` uses them)."""

DEFAULT_MARGIN = 0.01  # held-out APGR a candidate must add to the serving model's
DEFAULT_MIN_HOLDOUT = 100  # held-out rows below which the gate refuses to judge
