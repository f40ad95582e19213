"""The wake-word benchmark's material: keyword clips, and an hour of other speech and noise."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from tests.appliance.triggers.speech import RATE, RATES, VOICES, Pcm, pink_noise, scene, speak

SNRS_DB = (20.0, 10.0)
# Things people say at a kiosk, and things a television says near one.
SENTENCES = (
    "Hello, I would like to know when the library opens tomorrow morning.",
    "Can you tell me where the nearest train station is?",
    "I need to renew my parking permit for next month.",
    "Okay, now I understand, thank you very much.",
    "Hey, my name is Alex and I came about my appointment.",
    "The weather on the coast will be windy with some rain in the afternoon.",
    "Is there a pharmacy open on Sunday near the market square?",
    "My computer stopped working and I lost all my files.",
    "Could you call a taxi to the main entrance, please?",
    "We are looking for the museum of natural history.",
    "Please repeat that, I did not hear you.",
    "How much does a day ticket for the bus cost?",
    "And now the news: the council approved the new bridge on Tuesday.",
    "Nobody knows what happened to the old lighthouse keeper.",
    "I would like a table for two at seven o'clock.",
    "The next train to the airport leaves from platform nine.",
    "Turn left after the bakery and walk straight to the river.",
    "Thank you, that was really helpful, have a nice day.",
    "Do you know if the swimming pool is open during the holidays?",
    "Okay, so what are the opening hours of the town hall?",
    "Hey, I was here yesterday and forgot my umbrella.",
    "A lexicon of local history is available at the front desk.",
    "My neighbour Nadia said the concert was cancelled.",
    "The jarring noise of the traffic makes it hard to think.",
)


def positives(phrases: tuple[str, ...]) -> Iterator[tuple[str, Pcm]]:
    """(label, 16 kHz clip) for each phrase, voice, speaking rate and noise level."""
    cases = itertools.product(phrases, VOICES, RATES, SNRS_DB)
    for seed, (text, voice, wpm, snr) in enumerate(cases):
        yield (
            f"{text}|{voice}|{wpm}|{snr:.0f}dB",
            scene(speak(text, voice, wpm), snr_db=snr, seed=seed),
        )


def negative_hour(seconds: float = 3600.0, keywords: tuple[str, ...] = ()) -> Iterator[Pcm]:
    """At least `seconds` of non-keyword speech in noise, pauses and noise alone, in pieces."""
    total = 0
    rng = np.random.default_rng(42)
    # A sentence that says one of the keywords is not a false accept for that engine.
    sentences = [t for t in SENTENCES if not any(k in t.lower() for k in keywords)]
    cases = list(itertools.product(sentences, VOICES, RATES))
    for round_ in itertools.count():
        order = rng.permutation(len(cases))
        for i in order:
            text, voice, wpm = cases[i]
            snr = float(rng.choice([30.0, 20.0, 10.0]))
            clip = scene(speak(text, voice, wpm), snr_db=snr, seed=round_ * 1000 + int(i))
            # Every tenth piece: half a minute of noise alone, louder than usual.
            if i % 10 == 0:
                clip = np.concatenate([clip, pink_noise(30 * RATE, 1000.0, seed=int(i))])
            yield clip
            total += clip.size
            if total >= seconds * RATE:
                return
