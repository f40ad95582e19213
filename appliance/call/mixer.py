"""Every remote voice in one stream: tracks summed with headroom, then a peak limiter.

Each remote audio track (agent, person, SIP bridge) pushes its samples, already at the
speaker's rate, into a ring of its own; `mix()` is called once per 10 ms by the room's mix
clock and sums the next frame of every track that has one. A track with nothing queued (a
stalled network, a muted browser) adds nothing and waits for a fresh prefill; it never holds
back the others. The sum is taken in float32 (headroom: two loud voices do not wrap) and a
limiter pulls its peaks under `CEILING` (instant attack, smooth release), so what leaves is
never clipped. Nothing is allocated per frame: every buffer is made when a track is added.
"""

from __future__ import annotations

import numpy as np

from appliance.audio.base import SAMPLES_PER_FRAME, Frame

# The limiter's ceiling: -1 dBFS of int16 full scale.
CEILING = 0.891 * 32767.0
# Per 10 ms frame, how much of the way back to unity gain the limiter goes (about 90 ms).
RELEASE = 0.1
# A track's ring holds this many frames; past it the oldest samples give way (bounded delay).
DEPTH_FRAMES = 8
# A track that ran dry contributes again once this many frames are queued (absorbs jitter
# between its arrivals and the mix clock).
PREFILL_FRAMES = 2
_MAX = np.float32(32767.0)
_MIN = np.float32(-32768.0)


class _Track:
    """One track's ring of samples, written by `push`, read a frame at a time by the mix."""

    __slots__ = ("count", "dropped", "playing", "read", "ring", "underruns", "write")

    def __init__(self, depth_frames: int) -> None:
        # float32, so that mixing adds without a cast (a cast makes numpy allocate a buffer).
        self.ring = np.zeros(depth_frames * SAMPLES_PER_FRAME, dtype=np.float32)
        self.read = 0
        self.write = 0
        self.count = 0  # samples queued
        self.playing = False
        self.underruns = 0
        self.dropped = 0  # samples dropped because the ring was full


class Mixer:
    """Sums the 10 ms frames of any number of tracks into one limited int16 frame."""

    def __init__(
        self, *, depth_frames: int = DEPTH_FRAMES, prefill_frames: int = PREFILL_FRAMES
    ) -> None:
        if not 0 < prefill_frames <= depth_frames:
            raise ValueError("need 0 < prefill_frames <= depth_frames")
        self._depth = depth_frames
        self._prefill = prefill_frames * SAMPLES_PER_FRAME
        self._tracks: dict[str, _Track] = {}
        self._acc = np.zeros(SAMPLES_PER_FRAME, dtype=np.float32)
        self._tmp = np.zeros(SAMPLES_PER_FRAME, dtype=np.float32)
        self._out = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        self._ramp = np.arange(1, SAMPLES_PER_FRAME + 1, dtype=np.float32) / SAMPLES_PER_FRAME
        self._gain = 1.0
        self.limited_frames = 0  # frames whose peaks the limiter pulled down

    @property
    def tracks(self) -> list[str]:
        """The keys of the tracks being mixed."""
        return list(self._tracks)

    def add_track(self, key: str) -> None:
        """Start mixing a track (its buffers are made now, not per frame)."""
        if key not in self._tracks:
            self._tracks[key] = _Track(self._depth)

    def remove_track(self, key: str) -> None:
        """Stop mixing a track; what it had queued is dropped."""
        self._tracks.pop(key, None)

    def stats(self, key: str) -> tuple[int, int]:
        """A track's (underruns, dropped samples) so far."""
        track = self._tracks[key]
        return track.underruns, track.dropped

    def push(self, key: str, samples: Frame) -> None:
        """Queue a track's samples (any length, at the speaker's rate); the oldest give way."""
        track = self._tracks.get(key)
        if track is None:
            return
        ring = track.ring
        size = len(ring)
        n = len(samples)
        if n > size:
            track.dropped += n - size
            samples = samples[n - size :]
            n = size
        overflow = track.count + n - size
        if overflow > 0:
            track.read = (track.read + overflow) % size
            track.count -= overflow
            track.dropped += overflow
        first = min(n, size - track.write)
        np.copyto(ring[track.write : track.write + first], samples[:first], casting="unsafe")
        if first < n:
            np.copyto(ring[: n - first], samples[first:], casting="unsafe")
        track.write = (track.write + n) % size
        track.count += n

    def mix(self) -> Frame | None:
        """The next mixed 10 ms frame, or None when no track has audio for it.

        The frame returned is the mixer's own buffer, overwritten by the next call.
        """
        acc = self._acc
        acc.fill(0.0)
        contributors = 0
        for track in self._tracks.values():
            if not track.playing:
                if track.count < self._prefill:
                    continue
                track.playing = True
            if track.count < SAMPLES_PER_FRAME:
                track.playing = False  # ran dry: silent until it is prefilled again
                track.underruns += 1
                continue
            self._add(track)
            contributors += 1
        if contributors == 0:
            return None
        self._limit()
        return self._out

    def _add(self, track: _Track) -> None:
        ring = track.ring
        size = len(ring)
        start = track.read
        first = min(SAMPLES_PER_FRAME, size - start)
        np.add(self._acc[:first], ring[start : start + first], out=self._acc[:first])
        if first < SAMPLES_PER_FRAME:
            rest = SAMPLES_PER_FRAME - first
            np.add(self._acc[first:], ring[:rest], out=self._acc[first:])
        track.read = (start + SAMPLES_PER_FRAME) % size
        track.count -= SAMPLES_PER_FRAME

    def _limit(self) -> None:
        acc, tmp = self._acc, self._tmp
        np.abs(acc, out=tmp)
        peak = float(tmp.max())
        target = 1.0 if peak <= CEILING else CEILING / peak
        if target < 1.0:
            self.limited_frames += 1
        if target <= self._gain:
            # Attack at once, for the whole frame: no sample may pass the ceiling.
            self._gain = target
            if target < 1.0:
                np.multiply(acc, np.float32(target), out=acc)
        else:
            # Release: ramp from the old gain towards the new one across the frame; every
            # point of the ramp is at most `target`, so the ceiling still holds.
            new = self._gain + (target - self._gain) * RELEASE
            if new > 0.9999:
                new = 1.0
            np.multiply(self._ramp, np.float32(new - self._gain), out=tmp)
            np.add(tmp, np.float32(self._gain), out=tmp)
            np.multiply(acc, tmp, out=acc)
            self._gain = new
        np.rint(acc, out=acc)
        np.minimum(acc, _MAX, out=acc)  # np.clip's wrapper allocates; these do not
        np.maximum(acc, _MIN, out=acc)
        np.copyto(self._out, acc, casting="unsafe")
