"""Datasets: seeded synthetic worlds today; MovieLens and logged-feedback loaders to come."""

from recsys.data.synthetic import SyntheticWorld, make_world

__all__ = ["SyntheticWorld", "make_world"]
