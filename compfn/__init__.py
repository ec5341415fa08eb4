"""compfn: JAX/TPU-native RL post-training of LLMs on compositions of string functions."""

__version__ = "0.1.0"
