"""Audio: the capture and playback streams, behind small protocols."""

from appliance.audio.base import FRAME_MS, SAMPLE_RATE, SAMPLES_PER_FRAME, Microphone, Speaker

__all__ = ["FRAME_MS", "SAMPLES_PER_FRAME", "SAMPLE_RATE", "Microphone", "Speaker"]
