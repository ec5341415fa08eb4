"""Static buffer sizes: the one power-of-two rounding that every padded buffer uses (prompt and
reference widths, batch rows, the interpreter's tables, the scorers' buckets), so that a stream
of inputs of varying sizes compiles a few programs instead of one per size.

    >>> next_power_of_two(5), next_power_of_two(0), next_power_of_two(3, minimum=16)
    (8, 1, 16)

It imports nothing of compfn, so every layer may use it (``tests/test_layers.py`` checks that no
other module rounds to a power of two on its own).
"""

__all__ = ['next_power_of_two']


def next_power_of_two(n: int, minimum: int = 1) -> int:
  """The smallest power of two >= ``max(n, minimum, 1)``."""
  n = max(int(n), int(minimum), 1)
  return 1 << (n - 1).bit_length()
