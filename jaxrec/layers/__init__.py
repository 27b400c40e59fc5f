"""Flax Linen building blocks: pluggable attention, transformer blocks, hash dropout."""
