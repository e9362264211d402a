"""Shared pieces of dynknock: bus catalogue and codec, config, lab."""
