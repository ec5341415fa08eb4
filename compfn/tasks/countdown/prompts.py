"""The paper's Countdown prompt (PAPER §2.4), byte for byte.

The paper's preprocessing (PRIME-RL/RL-Compositionality
``examples/data_preprocess/reasoning_gym_countdown*.py``) formats one template with
``numbers=str(data['metadata']['numbers'])`` (a Python list, e.g. ``[95, 14, 18]``) and the
integer target, as the single user message; there is no system message.

    >>> prompt([95, 14, 18], 99)[:50]
    'Using the numbers [95, 14, 18], create an equation'
"""

from __future__ import annotations

from typing import Sequence

__all__ = ['TEMPLATE', 'prompt']

TEMPLATE = (
    'Using the numbers {numbers}, create an equation that equals {target}. You can use '
    'basic arithmetic operations (+, -, *, /) and each number can only be used once. '
    'Show your work in <think> </think> tags. And return the final answer in <answer> '
    '</answer> tags, for example <answer> (1 + 2) / 3 * 4 </answer>.'
)


def prompt(numbers: Sequence[int], target: int) -> str:
  """The paper's prompt for ``numbers`` (in display order) and ``target``."""
  nums = [int(v) for v in numbers]
  return TEMPLATE.format(numbers=str(nums), target=int(target))
