"""recsys: RL-based recommendation and ad-placement microservice."""

__version__ = "0.1.0"
