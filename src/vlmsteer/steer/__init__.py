"""Steering: vectors, builders, the steerer and the selection metric."""

from vlmsteer.steer.steerer import steer
from vlmsteer.steer.vector import SteeringVector

__all__ = ["SteeringVector", "steer"]
