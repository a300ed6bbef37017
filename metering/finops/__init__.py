"""FinOps over the ledger: month-end forecasts, spend anomalies and invoice reconciliation.

Each module is one concept, and the maths is pure functions over rows (``forecast``, ``anomaly``, ``reconcile``);
reading the ledger is kept to ``daily`` (the rollups, through ``Ledger.report``) and ``hourly`` (the records table,
through ``Ledger.request_rows`` and ``hourly_spend``). No HTTP here: ``cli`` prints, ``notify`` builds webhook bodies
and hands them to the budget alerts' sender. Every date range is UTC days ``[start, end)``: inclusive start,
exclusive end.
"""
