"""Capped exponential backoff with jitter, driven by an injectable random source."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from `initial_s` up to `max_s`, each jittered by ±`jitter`."""

    initial_s: float = 1.0
    max_s: float = 60.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0

    def next_delay(self, floor_s: float = 0.0) -> float:
        """The delay before the next attempt; never below `floor_s` (e.g. a Retry-After)."""
        base = min(self.max_s, self.initial_s * (2**self.attempts))
        self.attempts += 1
        spread = base * self.jitter
        return float(max(floor_s, base + self.rng.uniform(-spread, spread)))

    def reset(self) -> None:
        """Start again from `initial_s` after a success."""
        self.attempts = 0
