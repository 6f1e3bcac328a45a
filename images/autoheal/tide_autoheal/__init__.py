"""tide-autoheal: restart unhealthy containers, and the dependents of those that
recover, with backoff. policy.py decides (no I/O, no clock); engine.py talks to
Docker; config.py reads the environment. The contract is ../README.md."""
