"""Locust profile for a running recsys service (loopback only, bounded by --run-time).

    recsys loadtest http://127.0.0.1:8000 --rps 50 --duration 30 --slo-p99-ms 200
    # or Locust directly, with its own UI or flags:
    locust -f load_tests/locustfile.py --headless --host http://127.0.0.1:8000 \\
        --users 20 --spawn-rate 20 --run-time 30s

The clients live in :mod:`recsys.loadtest_profile` (known, new and returning users; slates,
clicks and dwell; a small share of malformed requests that must get a 4xx); set
RECSYS_LOAD_USERS to the world size if it is not the default, RECSYS_LOAD_RATE for the
requests per second of each client.
"""

from recsys.loadtest_profile import SlateClient

__all__ = ["SlateClient"]
