"""The request's steps, free of HTTP: admit -> trim -> score and decide -> response cache -> budget gate ->
dispatch with fallbacks -> settle. Ingress adapters (``proxy``) parse a wire format into a ``pipeline.request.Request``
and render the ``Served`` or ``Streaming`` result, or the ``TiergateError``, in that format."""
