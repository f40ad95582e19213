"""Triggers: what starts and ends a call (buttons now, the wake word later)."""
