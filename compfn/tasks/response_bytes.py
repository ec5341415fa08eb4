"""Host-side checks and UTF-8 encoding of model responses for the on-device scorers."""

from __future__ import annotations

from typing import Optional, Sequence, Union


def encode_responses(
    responses: Sequence[Union[str, bytes]], overlong: Optional[Sequence[bool]] = None
) -> tuple[list[bytes], list[bool]]:
  """Responses as UTF-8 bytes (``bytes`` pass through unchanged, so invalid UTF-8 reaches the
  scorer as a token->bytes table would produce it) and the overlong flags as a list.

  Raises ValueError naming the offending response: not str/bytes, not encodable, or a number
  of overlong flags that differs from the number of responses."""
  overlong = [False] * len(responses) if overlong is None else list(overlong)
  if len(overlong) != len(responses):
    raise ValueError(f'{len(responses)} responses but {len(overlong)} overlong flags')
  enc = []
  for i, r in enumerate(responses):
    if isinstance(r, str):
      try:
        enc.append(r.encode('utf-8'))
      except UnicodeEncodeError as err:
        raise ValueError(f'response {i} is not encodable as UTF-8: {err}') from None
    elif isinstance(r, (bytes, bytearray, memoryview)):
      enc.append(bytes(r))
    else:
      raise ValueError(f'response {i} must be str or bytes, got {type(r).__name__}')
  return enc, overlong
