"""Procedural captioning clips: each sound and its captions are made from the same random parameters.

Every maker takes a ``numpy.random.Generator`` and returns a :class:`SoundClip` with a 16 kHz
float32 waveform (2 to 10 s), at least :data:`N_REFS` distinct reference captions in varied
wording, and the parameters that made it. Speech kinds take a :class:`Speech` (a TTS waveform and
who speaks) so this module needs no TTS itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from . import signals as S

N_REFS = 5

PITCH = {
    "low": ((90.0, 250.0), ["low", "deep", "low pitched"]),
    "medium": ((350.0, 900.0), ["medium pitched", "mid range", "moderately pitched"]),
    "high": ((1500.0, 3500.0), ["high", "high pitched", "shrill"]),
}
LEVEL = {"quiet": ((-38.0, -32.0), ["quiet", "faint", "soft"]),
         "moderate": ((-28.0, -20.0), [""]),
         "loud": ((-16.0, -11.0), ["loud", "strong"])}
NOISE_WORDS = {"white": ["static", "hissing static", "white noise", "a steady hiss"],
               "pink": ["rushing noise", "a soft rushing sound", "whooshing noise", "broadband noise"],
               "brown": ["a low rumble", "rumbling noise", "a deep rumble", "a muffled roar"]}
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five"}


@dataclass
class Speech:
    """A spoken clip for the speech kinds: 16 kHz float32 samples and who speaks."""

    wav: np.ndarray
    gender: str  # "male" | "female"
    voice: str
    text: str = ""
    robotic: bool = False


@dataclass
class SoundClip:
    kind: str
    wav: np.ndarray
    references: list
    params: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# Caption helpers
# ------------------------------------------------------------------------------------------------


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\ba ([aeiou])", r"an \1", text)
    text = re.sub(r"\bA ([aeiou])", r"An \1", text)
    return text[:1].upper() + text[1:]


def _pick(rng, options, k: int = N_REFS) -> list:
    """k distinct captions from the candidates (tidied), in random order."""
    cands = list(dict.fromkeys(_tidy(c) for c in options if c))
    if len(cands) < k:
        raise AssertionError(f"only {len(cands)} distinct captions for a clip; need {k}: {cands}")
    idx = rng.permutation(len(cands))[:k]
    return [cands[i] for i in idx]


def _w(rng, words):
    return words[int(rng.integers(len(words)))]


def _level(rng, allow=("quiet", "moderate", "moderate", "loud")):
    name = allow[int(rng.integers(len(allow)))]
    (lo, hi), words = LEVEL[name]
    return name, float(rng.uniform(lo, hi)), words


def _pitch(rng, name=None):
    name = name or ("low", "medium", "high")[int(rng.integers(3))]
    (lo, hi), words = PITCH[name]
    return name, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), words


def _dur_words(seconds):
    return "a few seconds" if seconds < 4 else "several seconds"


def _finish(kind, x, level_db, refs, **params) -> SoundClip:
    wav = S.set_level(x, level_db) if level_db is not None else x.astype(np.float32)
    params = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in params.items()}
    return SoundClip(kind, wav, refs, {"level_db": round(level_db, 1) if level_db is not None else None,
                                       "seconds": round(len(wav) / S.SR, 2), **params})


# ------------------------------------------------------------------------------------------------
# Non-speech kinds
# ------------------------------------------------------------------------------------------------


def make_tone(rng):
    pname, f, pw = _pitch(rng)
    lname, db, lw = _level(rng)
    buzzy = bool(rng.random() < 0.35)
    secs = float(rng.uniform(2, 8))
    harm = [1 / k if k % 2 else 0 for k in range(1, 12)] if buzzy else [1.0]
    x = S.tone(f, secs, harmonics=harm) * S.envelope(S.n_samples(secs), 0.02, 0.05)
    p, lv = _w(rng, pw), _w(rng, lw)
    noun = "buzz" if buzzy else "tone"
    opts = [f"a steady {p} {noun}", f"a {lv} {p} {noun} plays continuously",
            f"a continuous {p} {'buzzing tone' if buzzy else 'beep'} that does not change",
            f"an electronic {p} {noun} holds for {_dur_words(secs)}",
            f"a single {p} note sounds without stopping",
            f"a {'harsh electronic buzz' if buzzy else 'pure sine tone'} at a {pname} pitch",
            "a low hum holds steady" if pname == "low" else
            "a high whine continues" if pname == "high" else f"a {lv} flat tone at one pitch"]
    return _finish("tone", x, db, _pick(rng, opts), pitch=pname, freq_hz=f, buzzy=buzzy, level=lname)


def make_sweep(rng):
    up = bool(rng.random() < 0.5)
    repeated = bool(rng.random() < 0.4)
    lname, db, lw = _level(rng)
    lo, hi = float(rng.uniform(150, 400)), float(rng.uniform(1500, 4000))
    f0, f1 = (lo, hi) if up else (hi, lo)
    if repeated:
        chirp = float(rng.uniform(0.15, 0.5))
        gap = float(rng.uniform(0.05, 0.4))
        count = int(rng.integers(4, 12))
        secs = max(2.0, count * (chirp + gap) + 0.2)
        x = np.zeros(S.n_samples(secs))
        one = S.sweep(f0, f1, chirp) * S.envelope(S.n_samples(chirp), 0.005, 0.02)
        for i in range(count):
            S.place(x, one, 0.1 + i * (chirp + gap))
        d = "upward" if up else "downward"
        r = "rising" if up else "falling"
        opts = [f"a tone quickly sweeps {'up' if up else 'down'} again and again", f"repeated {r} chirps",
                f"fast {d} sweeps repeat", f"short electronic chirps that {'rise' if up else 'fall'} in pitch",
                f"a series of quick {r} tones", f"a chirping sound that {'goes up' if up else 'drops'} each time"]
    else:
        secs = float(rng.uniform(2.5, 9))
        x = S.sweep(f0, f1, secs) * S.envelope(S.n_samples(secs), 0.05, 0.1)
        verb = _w(rng, ["rises", "climbs", "goes up"] if up else ["falls", "drops", "descends"])
        adv = _w(rng, ["slowly", "gradually", "steadily"])
        opts = [f"a tone {verb} {adv} in pitch",
                f"the pitch of an electronic tone glides {'upward' if up else 'downward'}",
                f"a {'rising' if up else 'falling'} sweep from {'low to high' if up else 'high to low'}",
                f"a sound slides {adv} from a {'low' if up else 'high'} pitch to a {'high' if up else 'low'} one",
                f"a {_w(rng, lw)} whistle-like tone {'rises' if up else 'falls'} {adv}",
                f"one long {'upward' if up else 'downward'} glide in pitch"]
    return _finish("sweep", x, db, _pick(rng, opts), direction="up" if up else "down",
                   repeated=repeated, level=lname)


def _background(rng, seconds, allow=("none", "white", "brown")):
    kind = allow[int(rng.integers(len(allow)))]
    if kind == "none":
        return kind, None, [""]
    bg = S.noise(kind, seconds, rng)
    words = {"white": [" over static", " with hissing static behind it", " while static hisses"],
             "brown": [" over a low rumble", " with a deep rumble in the background",
                       " while something rumbles underneath"]}[kind]
    return kind, bg, words


def make_siren(rng):
    wail = bool(rng.random() < 0.5)
    secs = float(rng.uniform(3, 9))
    n = S.n_samples(secs)
    t = np.arange(n) / S.SR
    lo, hi = float(rng.uniform(500, 800)), float(rng.uniform(1100, 1600))
    if wail:
        period = float(rng.uniform(1.5, 4.0))
        f = lo + (hi - lo) * 0.5 * (1 - np.cos(2 * np.pi * t / period))
        clauses = ["a siren wails", "an emergency siren rises and falls", "a wailing siren",
                   "a siren goes up and down in pitch", "the sound of a siren sweeping up and down"]
    else:
        period = float(rng.uniform(0.8, 1.4))
        f = np.where((t % period) < period / 2, hi, lo)
        clauses = ["a two tone siren alternates between high and low", "a siren switches between two notes",
                   "an alarm alternates two pitches", "a siren repeats a high note and a low note",
                   "a high and low siren sounds over and over"]
    x = S.tone(f, secs, harmonics=[1, 0.5, 0.3, 0.2]) * S.envelope(n, 0.1, 0.2)
    bg_kind, bg, bg_words = _background(rng, secs)
    snr = float(rng.uniform(3, 12))
    if bg is not None:
        x = S.mix_at_snr(x, bg, snr)
    lname, db, _ = _level(rng, ("moderate", "loud"))
    opts = [c + _w(rng, bg_words) for c in clauses]
    return _finish("siren", x, db, _pick(rng, opts), style="wail" if wail else "two-tone", period_s=period,
                   background=bg_kind, snr_db=snr if bg is not None else None, level=lname)


def make_beeps(rng):
    pname, f, pw = _pitch(rng, ("medium", "high")[int(rng.integers(2))])
    lname, db, lw = _level(rng)
    counted = bool(rng.random() < 0.3)
    beep = float(rng.uniform(0.06, 0.25))
    if counted:
        count = int(rng.integers(2, 6))
        rate = float(rng.uniform(1.5, 4))
        secs = max(2.0, count / rate + float(rng.uniform(0.5, 1.5)))
    else:
        rate = float(np.exp(rng.uniform(np.log(0.8), np.log(8))))
        beep = min(beep, 0.6 / rate)
        secs = float(rng.uniform(3, 8))
        count = int((secs - 0.3) * rate)
    x = np.zeros(S.n_samples(secs))
    one = S.tone(f, beep) * S.envelope(S.n_samples(beep), 0.005, 0.01)
    for i in range(count):
        S.place(x, one, 0.2 + i / rate)
    p = _w(rng, pw)
    if counted:
        num = NUMBERS[count]
        opts = [f"a {p} beep sounds {num} times", f"{num} short {p} beeps", f"an electronic device beeps {num} times",
                f"{num} beeps and then silence", f"a beep repeats {num} times and stops"]
    elif rate >= 3:
        opts = [f"rapid {p} beeping", f"a {p} beep repeats quickly", "fast electronic beeps",
                f"a {_w(rng, pw)} alarm beeps rapidly", "quick beeps in a steady rhythm"]
    elif rate <= 1.5:
        opts = [f"a {p} beep repeats slowly", "slow, evenly spaced beeps", f"a {p} tone beeps at a slow pace",
                "an electronic beep every second or so", "a beep, a pause, then another beep, again and again"]
    else:
        opts = [f"a {p} beep repeats at a steady pace", "regular electronic beeping", f"evenly spaced {p} beeps",
                f"a {_w(rng, lw)} beeping sound in a regular rhythm", "a machine beeps over and over"]
    return _finish("beeps", x, db, _pick(rng, opts), pitch=pname, freq_hz=f, rate_hz=rate, count=count,
                   counted=counted, level=lname)


def _click(rng):
    n = S.n_samples(0.006)
    return rng.standard_normal(n) * S.decay(n, 0.0015)


def make_clicks(rng):
    style = ("slow", "fast", "random")[int(rng.integers(3))]
    secs = float(rng.uniform(2, 8))
    x = np.zeros(S.n_samples(secs))
    if style == "random":
        times = np.sort(rng.uniform(0, secs - 0.01, int(rng.integers(int(4 * secs), int(15 * secs)))))
        rate = len(times) / secs
        opts = ["irregular crackling clicks", "random clicks and pops", "a crackling sound",
                "clicks at uneven intervals", "scattered sharp pops and clicks"]
    else:
        rate = float(rng.uniform(1, 3) if style == "slow" else rng.uniform(8, 20))
        times = np.arange(0.1, secs - 0.01, 1 / rate)
        opts = (["a clock ticks steadily", "steady ticking", "a regular ticking sound",
                 "sharp clicks repeat at a slow even pace", "a clock-like tick repeats"]
                if style == "slow" else
                ["rapid clicking", "a fast rattle of clicks", "clicks repeat very quickly",
                 "a rapid series of sharp clicks", "a fast ratcheting sound"])
    for t0 in times:
        S.place(x, _click(rng) * float(rng.uniform(0.6, 1.0)), float(t0))
    lname, db, _ = _level(rng)
    return _finish("clicks", x, db, _pick(rng, opts), style=style, rate_hz=rate, level=lname)


def make_noise_bursts(rng):
    color = ("white", "pink", "brown")[int(rng.integers(3))]
    regular = bool(rng.random() < 0.6)
    burst = float(rng.uniform(0.05, 0.15) if rng.random() < 0.5 else rng.uniform(0.3, 0.8))
    secs = float(rng.uniform(3, 9))
    x = np.zeros(S.n_samples(secs))
    t, period = 0.1, burst + float(rng.uniform(0.15, 0.8))
    while t < secs - burst:
        S.place(x, S.noise(color, burst, rng) * S.envelope(S.n_samples(burst), 0.005, 0.01), t)
        t += period if regular else burst + float(rng.uniform(0.1, 1.2))
    nw = _w(rng, ["static", "noise", "hiss"] if color == "white" else ["noise", "rushing noise"]
            if color == "pink" else ["rumbling noise", "low noise"])
    length = "short" if burst < 0.2 else "long"
    if regular:
        opts = [f"{length} bursts of {nw} repeat in a steady rhythm", f"{nw} bursts at regular intervals",
                f"bursts of {nw} start and stop regularly", f"rhythmic bursts of {nw}",
                f"a pulsing {nw} that switches on and off evenly"]
    else:
        opts = [f"bursts of {nw} start and stop at random", f"irregular bursts of {nw}",
                f"{nw} cuts in and out unpredictably", f"{length} uneven bursts of {nw}",
                f"{nw} comes and goes at irregular moments"]
    lname, db, _ = _level(rng, ("moderate", "loud"))
    return _finish("noise_bursts", x, db, _pick(rng, opts), color=color, regular=regular, burst_s=burst, level=lname)


def make_noise(rng):
    color = ("white", "pink", "brown")[int(rng.integers(3))]
    shape = ("steady", "steady", "in", "out")[int(rng.integers(4))]
    secs = float(rng.uniform(2, 9))
    x = S.fade(S.noise(color, secs, rng), shape)
    base = {"white": ["a steady hiss of static", "continuous white noise", "constant hissing static",
                      "static noise with no break", "a hissing sound that stays the same"],
            "pink": ["a constant rushing noise", "steady broadband noise with a soft rushing quality",
                     "a whooshing noise continues", "a rushing sound that stays the same", "steady pink noise"],
            "brown": ["a deep rumbling noise", "a low rumble continues", "steady low rumbling",
                      "a muffled roar", "a constant deep rumble"]}[color]
    if shape != "steady":
        tail = (["that grows louder", "that gradually gets louder", "fading in"] if shape == "in" else
                ["that slowly fades away", "that gradually dies down", "fading out"])
        base = [re.sub(r"( continues| with no break| that stays the same)$", "", b) + " " + _w(rng, tail) for b in base]
    lname, db, _ = _level(rng)
    return _finish("noise", x, db, _pick(rng, base), color=color, shape=shape, level=lname)


def make_silence(rng):
    secs = float(rng.uniform(2, 6))
    faint = bool(rng.random() < 0.5)
    if faint:
        x = S.noise("white", secs, rng)
        opts = ["near silence with a faint hiss", "almost nothing but a very quiet hiss",
                "a very faint background hiss", "quiet static and nothing else", "a silent recording with slight hiss"]
        return _finish("silence", x, float(rng.uniform(-62, -55)), _pick(rng, opts), faint_hiss=True)
    opts = ["silence", "there is no sound", "nothing can be heard", "complete silence",
            "an empty recording with no sound"]
    return _finish("silence", np.zeros(S.n_samples(secs)), None, _pick(rng, opts), faint_hiss=False)


def make_hum(rng):
    mains = (50.0, 60.0)[int(rng.integers(2))]
    secs = float(rng.uniform(2, 8))
    harm = [1.0 / k ** float(rng.uniform(0.3, 1.0)) for k in range(1, 16)]
    x = S.tone(mains, secs, harmonics=harm) * S.envelope(S.n_samples(secs), 0.05, 0.05)
    lname, db, lw = _level(rng)
    opts = ["a low electrical hum", "a constant buzzing drone", "a deep steady hum", "an electrical buzz continues",
            "a droning hum that does not change", f"a {_w(rng, lw)} hum from electrical mains"]
    return _finish("hum", x, db, _pick(rng, opts), mains_hz=mains, level=lname)


def _melody(rng, secs):
    """A synthetic tune; returns (waveform at RMS 1, params, descriptive words)."""
    major = bool(rng.random() < 0.5)
    scale = [0, 2, 4, 5, 7, 9, 11] if major else [0, 2, 3, 5, 7, 8, 10]
    fast = bool(rng.random() < 0.5)
    note_s = float(rng.uniform(0.12, 0.25) if fast else rng.uniform(0.35, 0.7))
    timbre = ("soft", "bright", "plucked")[int(rng.integers(3))]
    root = int(rng.integers(55, 67))
    harm = {"soft": [1, 0.2], "bright": [1 / k for k in range(1, 9)], "plucked": [1, 0.5, 0.3, 0.2]}[timbre]
    x = np.zeros(S.n_samples(secs))
    step, t, degree = 0, 0.1, int(rng.integers(0, 7))
    while t < secs - note_s:
        degree = int(np.clip(degree + rng.integers(-2, 3), 0, 13))
        midi = root + 12 * (degree // 7) + scale[degree % 7]
        n = S.n_samples(note_s * 0.95)
        env = S.decay(n, note_s * 0.4) if timbre == "plucked" else S.envelope(n, 0.01, note_s * 0.3)
        S.place(x, S.tone(S.midi_hz(midi), note_s * 0.95, harmonics=harm) * env, t)
        if step % 4 == 0:  # a bass note on the beat
            S.place(x, 0.6 * S.tone(S.midi_hz(root - 12), note_s * 0.95) * S.decay(n, note_s), t)
        t += note_s
        step += 1
    mood = _w(rng, ["cheerful", "bright", "happy"] if major else ["somber", "melancholy", "sad sounding"])
    pace = _w(rng, ["fast", "quick", "lively"] if fast else ["slow", "gentle", "unhurried"])
    inst = {"soft": "a soft synthesizer", "bright": "a bright electronic keyboard",
            "plucked": "a plucked instrument"}[timbre]
    return S.normalise_rms(x), dict(mode="major" if major else "minor", fast=fast, timbre=timbre), (mood, pace, inst)


def make_melody(rng):
    secs = float(rng.uniform(3, 10))
    x, params, (mood, pace, inst) = _melody(rng, secs)
    opts = [f"a simple melody played on {inst}", f"a {pace} tune played on {inst}", f"a {mood} {pace} melody",
            "electronic music with a clear melody and a bass note", f"{inst} plays a {mood} tune",
            f"notes of a {pace} melody over a low bass"]
    lname, db, _ = _level(rng, ("quiet", "moderate"))
    return _finish("melody", x, db, _pick(rng, opts), level=lname, **params)


_EVENTS = {
    "beep": lambda rng: (S.tone(float(rng.uniform(800, 2500)), 0.25) * S.envelope(S.n_samples(0.25)),
                         ["a short beep", "a beep", "a quick electronic beep"]),
    "burst": lambda rng: (S.noise("white", 0.6, rng) * S.envelope(S.n_samples(0.6), 0.01, 0.05),
                          ["a burst of static", "a short hiss", "a blast of white noise"]),
    "rise": lambda rng: (S.sweep(300, 2500, 1.0) * S.envelope(S.n_samples(1.0), 0.02, 0.05),
                         ["a rising tone", "an upward sweep", "a tone that slides up"]),
    "fall": lambda rng: (S.sweep(2500, 300, 1.0) * S.envelope(S.n_samples(1.0), 0.02, 0.05),
                         ["a falling tone", "a downward sweep", "a tone that slides down"]),
    "thud": lambda rng: (S.tone(float(rng.uniform(50, 90)), 0.5) * S.decay(S.n_samples(0.5), 0.08),
                         ["a dull thud", "a low thump", "a heavy knock"]),
}


def make_sequence(rng):
    names = list(_EVENTS)
    i = int(rng.integers(len(names)))
    j = (i + 1 + int(rng.integers(len(names) - 1))) % len(names)
    (xa, wa), (xb, wb) = _EVENTS[names[i]](rng), _EVENTS[names[j]](rng)
    gap = float(rng.uniform(0.3, 1.5))
    start = float(rng.uniform(0.2, 0.8))
    secs = max(2.0, start + len(xa) / S.SR + gap + len(xb) / S.SR + float(rng.uniform(0.2, 1.0)))
    x = np.zeros(S.n_samples(secs))
    S.place(x, xa, start)
    S.place(x, xb, start + len(xa) / S.SR + gap)
    a, b = _w(rng, wa), _w(rng, wb)
    opts = [f"{a}, then {b}", f"{a} is followed by {b}", f"first {a} and then {b}", f"{b} comes after {a}",
            f"{_w(rng, wa)} followed by {_w(rng, wb)} after a pause"]
    lname, db, _ = _level(rng, ("moderate", "loud"))
    return _finish("sequence", x, db, _pick(rng, opts), first=names[i], second=names[j], gap_s=gap, level=lname)


# ------------------------------------------------------------------------------------------------
# Speech kinds
# ------------------------------------------------------------------------------------------------


def _speaker(rng, speech: Speech):
    who = ["a man", "a male voice"] if speech.gender == "male" else ["a woman", "a female voice"]
    who += ["a person", "someone"]
    if speech.robotic:
        who += ["a robotic voice", "a synthetic voice"]
    return who


def _speech_canvas(rng, speech: Speech):
    lead, tail = float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))
    secs = min(10.0, max(2.0, lead + len(speech.wav) / S.SR + tail))
    x = np.zeros(S.n_samples(secs))
    S.place(x, S.normalise_rms(speech.wav.astype(np.float64)), lead)
    return x, secs


def make_speech(rng, speech: Speech):
    x, _ = _speech_canvas(rng, speech)
    who = _speaker(rng, speech)
    opts = [f"{w} {v}" for w, v in zip(rng.permutation(who), ["speaks", "is talking", "says a sentence", "talks",
                                                                 "speaks clearly", "reads a sentence aloud"])]
    opts.append(f"{_w(rng, who)} speaks in a quiet room")
    return _finish("speech", x, float(rng.uniform(-26, -18)), _pick(rng, opts), voice=speech.voice,
                   gender=speech.gender, spoken_text=speech.text)


def make_speech_noise(rng, speech: Speech):
    x, secs = _speech_canvas(rng, speech)
    bg_kind = ("white", "pink", "brown", "hum", "beeps")[int(rng.integers(5))]
    if bg_kind == "hum":
        bg = S.tone(60.0, secs, harmonics=[1 / k for k in range(1, 12)])
        bw = ["a low hum", "an electrical hum", "a steady drone"]
    elif bg_kind == "beeps":
        bg = np.zeros(len(x))
        beep = S.tone(float(rng.uniform(900, 2000)), 0.1) * S.envelope(S.n_samples(0.1))
        for t0 in np.arange(0.1, secs - 0.1, 1.0 / float(rng.uniform(1, 3))):
            S.place(bg, beep, float(t0))
        bw = ["beeping", "regular beeps", "a repeating beep"]
    else:
        bg = S.noise(bg_kind, secs, rng)
        bw = NOISE_WORDS[bg_kind]
    snr = float(rng.uniform(3, 15))
    x = S.mix_at_snr(x, bg, snr)
    who = _speaker(rng, speech)
    opts = [f"{_w(rng, who)} speaks while {_w(rng, bw)} plays in the background",
            f"{_w(rng, who)} talks over {_w(rng, bw)}", f"{_w(rng, bw)} as {_w(rng, who)} speaks",
            f"{_w(rng, who)} is speaking with {_w(rng, bw)} behind the voice",
            f"speech from {_w(rng, who)} mixed with {_w(rng, bw)}",
            f"{_w(rng, who)} says something over {_w(rng, bw)}"]
    opts = [o.replace("static plays", "static hisses") for o in opts]
    return _finish("speech_noise", x, float(rng.uniform(-26, -16)), _pick(rng, opts), voice=speech.voice,
                   gender=speech.gender, background=bg_kind, snr_db=snr, spoken_text=speech.text)


def make_speech_music(rng, speech: Speech):
    x, secs = _speech_canvas(rng, speech)
    music, params, (mood, pace, inst) = _melody(rng, secs)
    snr = float(rng.uniform(5, 15))
    x = S.mix_at_snr(x, music, snr)
    who = _speaker(rng, speech)
    mw = [f"{pace} music", "soft music", f"a {mood} tune", f"{inst}", "a melody"]
    opts = [f"{_w(rng, who)} speaks while {_w(rng, mw)} plays", f"{_w(rng, who)} talks over {_w(rng, mw)}",
            f"music plays in the background as {_w(rng, who)} speaks",
            f"{_w(rng, who)} speaks with {_w(rng, mw)} playing behind",
            f"{_w(rng, mw)} accompanies {_w(rng, who)} talking",
            f"{_w(rng, who)} is speaking and {_w(rng, mw)} can be heard"]
    return _finish("speech_music", x, float(rng.uniform(-26, -16)), _pick(rng, opts), voice=speech.voice,
                   gender=speech.gender, snr_db=snr, spoken_text=speech.text, **params)


MAKERS = {"tone": make_tone, "sweep": make_sweep, "siren": make_siren, "beeps": make_beeps, "clicks": make_clicks,
          "noise_bursts": make_noise_bursts, "noise": make_noise, "silence": make_silence, "hum": make_hum,
          "melody": make_melody, "sequence": make_sequence}
SPEECH_MAKERS = {"speech": make_speech, "speech_noise": make_speech_noise, "speech_music": make_speech_music}
KINDS = tuple(MAKERS) + tuple(SPEECH_MAKERS)


def make_clip(kind: str, rng: np.random.Generator, speech: Speech | None = None) -> SoundClip:
    """One captioning clip of ``kind`` (speech kinds need ``speech``)."""
    if kind in SPEECH_MAKERS:
        if speech is None:
            raise ValueError(f"clip kind {kind!r} needs a Speech")
        return SPEECH_MAKERS[kind](rng, speech)
    return MAKERS[kind](rng)
