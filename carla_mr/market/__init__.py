"""The GPU-time market: system model, mechanisms, auction over ZeroMQ, ledger, schedule."""
