"""ctypes binding to libespeak-ng (from the ``espeakng-loader`` wheel) returning audio plus phoneme timing.

The lexicon's G2P (:func:`asrdistill.data.lexicon.espeak_pronunciation`) reads its phoneme events; the
synthetic corpus (``asrdistill synth-corpus``) is spoken by the same engine and keeps the audio too.

espeak-ng keeps all synthesis state in process-global variables, so this module holds one
engine per process (:func:`engine`); parallel synthesis must use separate processes.
"""

from __future__ import annotations

import _ctypes
import ctypes
import threading
from dataclasses import dataclass

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
POS_CHARACTER = 1
CHARS_UTF8 = 1

EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_SENTENCE = 2
EVENT_END = 5
EVENT_MSG_TERMINATED = 6
EVENT_PHONEME = 7
EVENT_SAMPLERATE = 8

PARAM_RATE = 1
PARAM_VOLUME = 2
PARAM_PITCH = 3
PARAM_RANGE = 4
PARAM_WORDGAP = 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class EspeakEvent(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h (espeak-ng 1.52)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # absolute sample index in this utterance
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(EspeakEvent)
)


@dataclass(frozen=True)
class Synthesis:
    """One synthesized utterance at espeak's native rate.

    ``phonemes`` holds (espeak mnemonic incl. stress marks, start sample) for every phoneme event,
    in order; a phoneme lasts until the next one starts (the last one until the end of ``audio``).
    """

    audio: np.ndarray  # int16, mono
    sample_rate: int
    phonemes: list[tuple[str, int]]


class Espeak:
    """The process-wide espeak-ng engine in synchronous mode with phoneme events on.

    espeak-ng carries static state from one utterance to the next (flutter phase, pitch-period
    phase, echo buffer), so identical requests give different samples depending on history.
    Every :meth:`synthesize` therefore reloads the library (dlclose + dlopen + init, < 1 ms), which
    makes each utterance a pure function of its arguments, whatever ran before in the process.
    """

    def __init__(self) -> None:
        import espeakng_loader

        self._lib_path = espeakng_loader.get_library_path()
        self._data_path = espeakng_loader.get_data_path().encode()
        # Klatt voices draw noise from libc rand(); reseed it too so output never depends on history.
        self._libc = ctypes.CDLL(None)
        self._libc.srand.argtypes = [ctypes.c_uint]
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _SynthCallback(self._on_audio)  # keep a reference: C holds the pointer
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        self.sample_rate = self._reload()

    def _reload(self) -> int:
        """Unload and load libespeak-ng afresh so that no state survives; returns the sample rate."""
        if self._lib is not None:
            self._lib.espeak_Terminate()
            _ctypes.dlclose(self._lib._handle)
        lib = ctypes.CDLL(self._lib_path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data_path, INITIALIZE_PHONEME_EVENTS)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate})")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        return rate

    def _on_audio(self, wav, num_samples: int, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == EVENT_PHONEME:
                self._events.append((ev.id.string.decode("utf-8", "replace"), int(ev.sample)))
            i += 1
        return 0

    def synthesize(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        word_gap: int = 0,
        seed: int = 0,
    ) -> Synthesis:
        """Speak ``text`` with ``voice`` (e.g. ``"en-us+f3"``); ``seed`` fixes espeak's internal noise."""
        with self._lock:
            self._reload()
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"unknown espeak voice {voice!r}")
            for param, value in (
                (PARAM_RATE, rate),
                (PARAM_PITCH, pitch),
                (PARAM_RANGE, pitch_range),
                (PARAM_WORDGAP, word_gap),
                (PARAM_VOLUME, 100),
            ):
                self._lib.espeak_SetParameter(param, int(value), 0)
            self._lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            self._libc.srand(int(seed) & 0xFFFFFFFF)
            self._chunks, self._events = [], []
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data, len(data))
            status = self._lib.espeak_Synth(buf, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed ({status})")
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            events, self._chunks, self._events = self._events, [], []
        return Synthesis(audio=audio.astype(np.int16, copy=False), sample_rate=self.sample_rate, phonemes=events)


_ENGINE: Espeak | None = None


def engine() -> Espeak:
    """The per-process engine, initialized on first use (espeak cannot host two)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE
