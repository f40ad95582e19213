"""Errors raised by the local demo stack."""

from __future__ import annotations


class DemoError(Exception):
    """Base class of every error raised by the `demo` package."""


class LiveKitServerNotFoundError(DemoError, FileNotFoundError):
    """No LiveKit server binary was found where we look for one."""


class LiveKitServerError(DemoError, RuntimeError):
    """The LiveKit server failed to start or died."""


class SpeechSynthesisError(DemoError, RuntimeError):
    """espeak-ng failed or is missing."""
