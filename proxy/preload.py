"""What a multi-worker server's fork server loads before it forks any worker (``proxy.server``): the app's modules
and the default tokenizer. Each worker would otherwise spend ~1.2 s and ~0.6 s of CPU on them at every start (and
again for each replacement of a worker that died); forked, it starts with them built, and the workers share those
pages copy-on-write.

A failure here is not raised: it would only take the fork server down. The worker meets the same failure at its own
start, where it is reported and the supervisor's back-off applies.
"""

from __future__ import annotations

import logging

try:
    import proxy.app  # noqa: F401  (imported for its import's sake)
    import proxy.server  # noqa: F401  (run_worker, the workers' target)
    from text.tokens import DEFAULT_MODEL, encoding_for

    encoding_for(DEFAULT_MODEL)
except Exception:  # noqa: BLE001  (see above: the worker reports it)
    logging.getLogger("tiergate.server").debug("fork server preload failed", exc_info=True)
