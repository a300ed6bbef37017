"""The promotion gate's default thresholds, in a module of their own (no numpy) so the policy's ``learning:``
settings can default to them without loading the training path (``classifiers.promotion`` uses them)."""

DEFAULT_MARGIN = 0.01  # held-out APGR a candidate must add to the serving model's
DEFAULT_MIN_HOLDOUT = 100  # held-out rows below which the gate refuses to judge
# Two-sided paired-bootstrap interval of APGR(candidate) - APGR(current): the gate promotes only when its lower
# bound is above 0, the watch rolls a promoted model back only when its upper bound is below 0. 0 turns the
# bootstrap off (the margin alone decides, as before). 0.8 = a one-sided 10% error rate each way: measured on the
# replay, 50 held-out rows with the margin alone promoted a model that was worse on the traffic that followed.
DEFAULT_CONFIDENCE = 0.8
