"""Flax Linen modules: shared layers, attention, EnCodec, T5 and the MusicGen LM."""
