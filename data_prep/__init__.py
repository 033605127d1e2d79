"""Offline corpus preparation: espeak-ng TTS binding, sentence grammar and the synthetic LibriSpeech-layout corpus."""
