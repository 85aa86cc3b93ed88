"""Steering: vectors, builders, the steerer and the selection metric."""

from vlmsteer.steer.steerer import Steering, steer
from vlmsteer.steer.vector import SteeringVector

__all__ = ["Steering", "SteeringVector", "steer"]
