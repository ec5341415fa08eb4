"""Tests for the reward scorers: compfn.tasks.strings.scoring (Python reference) and
compfn.tasks.strings.device_scoring (JAX).

Three layers of checks:

* hand-written cases with their exact (score, acc), on both implementations;
* a seeded fuzz corpus of adversarial responses: reference == oracle (a literal transcription of
  the paper's scorer, kept in this file as a test oracle) and device == reference;
* the jitted scorers compose under jax.jit and vmap.

All device work for the JSON cases is done in one module-scoped batch so that each padded shape
compiles once.
"""

import json
import json.scanner
import random
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compfn.tasks.strings import device_scoring
from compfn.tasks.strings import scoring

FUZZ_SEED = 20240611
N_FUZZ_JSON = 4000
N_FUZZ_TRACE = 3000


# ================================================================================================
# Oracle: the paper's scorer (verl codeio.py) transcribed literally. Test-only.
#
# The one substitution: json.loads runs with a decoder whose recursion limit is pinned at
# MAX_JSON_DEPTH (the pure-Python scanner with its object/array parsers wrapped in a depth
# counter that raises a non-JSONDecodeError exception, as RecursionError would), instead of the
# interpreter's stack-dependent limit. It shares no code with compfn's implementation.
# ================================================================================================
class _TooDeep(Exception):
  pass


class _PinnedDepthDecoder(json.JSONDecoder):

  def __init__(self, **kw):
    super().__init__(**kw)
    depth = [0]

    def limited(parse):
      def wrapped(*args, **kwargs):
        depth[0] += 1
        try:
          if depth[0] > scoring.MAX_JSON_DEPTH:
            raise _TooDeep()
          return parse(*args, **kwargs)
        finally:
          depth[0] -= 1

      return wrapped

    self.parse_object = limited(self.parse_object)
    self.parse_array = limited(self.parse_array)
    self.scan_once = json.scanner.py_make_scanner(self)


def _oracle_loads(text):
  return json.loads(text, cls=_PinnedDepthDecoder)


def _oracle_sub_extract(s):
  if '```json' not in s:
    stack = []
    last_json_start = None
    last_json_str = None
    for i, char in enumerate(s):
      if char == '{':
        stack.append(i)
        if last_json_start is None:
          last_json_start = i
      elif char == '}':
        if stack:
          stack.pop()
          if not stack:
            last_json_str = s[last_json_start : i + 1]
            last_json_start = None
  else:
    last_json_start = s.rfind('```json')
    last_json_end = s.find('```', last_json_start + len('```json'))
    last_json_str = s[last_json_start + 7 : last_json_end].strip()
  if last_json_str:
    try:
      return _oracle_loads(last_json_str.replace('\n', ''))
    except json.JSONDecodeError:
      last_json_str = (
          last_json_str.replace('False', 'false').replace('True', 'true').replace('None', 'null')
      )
      try:
        return _oracle_loads(last_json_str.replace('\n', ''))
      except json.JSONDecodeError:
        pass
  return None


def _oracle_extract(s):
  """Returns (value, stage) with stage in {'p1', 'p2', 'box', None}."""
  res = _oracle_sub_extract(s)
  if res is not None:
    return res, 'p1'
  s = s.replace('\\{', '{').replace('\\}', '}').replace('(', '[').replace(')', ']')
  res = _oracle_sub_extract(s)
  if res is not None:
    return res, 'p2'
  if '\\boxed{' in s:
    boxstart = s.rfind('\\boxed{') + len('\\boxed{')
    boxend = s.rfind('}', boxstart)
    boxcontent = s[boxstart:boxend]
    processed = (
        boxcontent.replace('\\\\', '\\')
        .replace('\\{', '{')
        .replace('\\}', '}')
        .replace('\\left', '')
        .replace('\\right', '')
    )
    res = _oracle_sub_extract(processed)
    if res is not None:
      return res, 'box'
  return None, None


def oracle_score(s, ref):
  """(score, stage); stage 'abort' when an exception escaped."""
  try:
    extracted, stage = _oracle_extract(s)
  except Exception:  # noqa: BLE001  (the paper's compute_score: any exception -> -1)
    return -1, 'abort'
  if extracted is None or not isinstance(extracted, dict) or 'output' not in extracted:
    return -1, stage
  return (1 if extracted['output'] == ref else 0), stage


# ================================================================================================
# Hand-written cases.
# ================================================================================================
BIG = '7' * 4301  # one digit over CPython's int string limit
OK_INT = '7' * 4300
BOX_OK = ' \\boxed{\\{"output": "abc"\\}}'  # a fallback that would score 1

# (response, ref, expected (score, acc)); responses may be bytes (decoded with 'replace').
JSON_CASES = [
    # basics and the verified behaviours of PAPER.md §1.5
    ('{"output": "abc"}', 'abc', (1, 1)),
    ('{"output": "abd"}', 'abc', (0, 0)),
    ("{'output': 'abc'}", 'abc', (-1, 0)),
    ('{"output": "abc"} and {"note": 1}', 'abc', (-1, 0)),
    ('{"output": ["abc"]}', 'abc', (0, 0)),
    ('{"output": 12}', '12', (0, 0)),
    ('{"answer": "abc"}', 'abc', (-1, 0)),
    ('["abc"]', 'abc', (-1, 0)),
    ('', 'abc', (-1, 0)),
    ('no json here', 'abc', (-1, 0)),
    ('{"output": ""}', '', (1, 1)),
    ('{"output": "abc"', 'abc', (-1, 0)),
    ('{"output": "abc"}}}', 'abc', (1, 1)),  # unmatched '}' ignored
    ('}}{"output": "abc"}', 'abc', (1, 1)),
    ('{"result": {"output": "abc"}}', 'abc', (-1, 0)),  # not top level
    ('{"a": {"b": 1}, "output": "abc"}', 'abc', (1, 1)),
    ('{"a": "}", "output": "abc"}', 'abc', (-1, 0)),  # naive about braces in strings
    ('{"output": "a{b}c"}', 'a{b}c', (1, 1)),
    ('{"output": "«ab»"}', '«ab»', (1, 1)),
    ('Reasoning {x} then {"output": "abc"}', 'abc', (1, 1)),
    ('{"output": "abc"} then {x}', 'abc', (-1, 0)),  # last complete span is {x}
    # fences
    ('```json\n{"output": "abc"}\n``` then {"output": "x"}', 'abc', (1, 1)),
    ('```json\n{"output": "abc"}\n```\n```json\n{"output": "x"}\n```', 'abc', (0, 0)),
    ('```json\n{"output": "abc"}\n```', 'abc', (1, 1)),
    ('```\n{"output": "abc"}\n```', 'abc', (1, 1)),  # plain fence: brace path
    ('```json\n{"output": "abc"}', 'abc', (-1, 0)),  # no close: last char '}' lost
    ('```json\n{"output": "abc"}\n', 'abc', (1, 1)),
    ('```json\n{"output": "abc"}é', 'abc', (1, 1)),  # drops one multi-byte char
    ('```json\n{"output": "abc"}😀', 'abc', (1, 1)),
    (b'```json\n{"output": "abc"}\xf0\x9f\x98', 'abc', (1, 1)),  # one U+FFFD is dropped
    (b'```json\n{"output": "abc"}\xe2\x80', 'abc', (1, 1)),
    (b'```json\n{"output": "abc"}\x80\x80', 'abc', (-1, 0)),  # two U+FFFD: one stays
    ('```json', 'abc', (-1, 0)),
    ('```json```', 'abc', (-1, 0)),
    ('```json\n{"output": "abc"} x\n```', 'abc', (-1, 0)),  # extra data
    ('```json\n"abc"\n```', 'abc', (-1, 0)),
    ('````json\n{"output": "abc"}\n````', 'abc', (1, 1)),
    ('```json\u3000{"output": "abc"}\u2003```', 'abc', (1, 1)),  # Unicode strip
    ('```json\x1c\x1f\x85\xa0{"output": "abc"}\u2028\u205f\x0b```', 'abc', (1, 1)),
    ('```json {"output": "abc"}\u200b```', 'abc', (-1, 0)),  # U+200B is not whitespace
    ('```json \ufeff{"output": "abc"}```', 'abc', (-1, 0)),
    # JSON null counts as "nothing": the fallbacks run
    ('```json\nnull\n```' + BOX_OK, 'abc', (1, 1)),
    ('```json\n{}\n```' + BOX_OK, 'abc', (-1, 0)),
    ('```json\nfalse\n```' + BOX_OK, 'abc', (-1, 0)),
    ('```json\n[]\n```' + BOX_OK, 'abc', (-1, 0)),
    # Python literals retry
    ('{"output": "abc", "ok": True}', 'abc', (1, 1)),
    ('{"output": "abc", "ok": None, "no": False}', 'abc', (1, 1)),
    ('{"output": "abc", "ok": Tr\nue}', 'abc', (-1, 0)),  # split word not rewritten
    ('{"output": "abc", "ok": TRUE}', 'abc', (-1, 0)),
    ('{"output": "True"}', 'true', (0, 0)),  # first parse succeeds
    ('{"output": "True", "x": True}', 'true', (1, 1)),  # retry rewrites strings too
    ('{"output": "abc", "x": Nonee}', 'abc', (-1, 0)),
    # newlines, tabs, CR, JSON whitespace
    ('{"output": "ab\nc"}', 'abc', (1, 1)),
    ('{"output": "ab\tc"}', 'ab\tc', (-1, 0)),
    ('{"output": "ab\rc"}', 'ab\rc', (-1, 0)),
    ('{\t"output":\r"abc" \n}', 'abc', (1, 1)),
    ('{"output":\x0b"abc"}', 'abc', (-1, 0)),
    ('{"output":\xa0"abc"}', 'abc', (-1, 0)),
    ('{"output": "a\x7fb"}', 'a\x7fb', (1, 1)),
    ('{"output": "a\x1fb"}', 'a\x1fb', (-1, 0)),
    # escapes
    ('{"output": "a\\"b"}', 'a"b', (1, 1)),
    ('{"output": "a\\\\b"}', 'a\\b', (1, 1)),
    ('{"output": "a\\/b"}', 'a/b', (1, 1)),
    ('{"output": "a\\tb\\nc\\rd\\be\\ff"}', 'a\tb\nc\rd\be\ff', (1, 1)),
    ('{"output": "\\u0061\\u00e9\\u00E9\\u4e2d"}', 'aéé中', (1, 1)),
    ('{"output": "\\ud83d\\ude00"}', '😀', (1, 1)),
    ('{"output": "\\uD83D\\uDE00x"}', '😀x', (1, 1)),
    ('{"output": "\\ud83d\\ud83d\\ude00"}', '😀', (0, 0)),  # lone high, then a pair
    ('{"output": "\\ud83dx"}', 'x', (0, 0)),
    ('{"output": "\\ude00"}', '', (0, 0)),
    ('{"output": "\\ud83d\\n"}', '\n', (0, 0)),
    ('{"output": "\\ud83d\\u0041"}', 'A', (0, 0)),
    ('{"output": "\\ud83d\\uZZZZ"}', 'A', (-1, 0)),
    ('{"output": "\\x41"}', 'A', (-1, 0)),
    ('{"output": "\\u12"}', 'A', (-1, 0)),
    ('{"output": "\\u0000"}', '\x00', (1, 1)),
    ('{"outp\\u0075t": "abc"}', 'abc', (1, 1)),
    ('{"\\u006f\\u0075tput": "abc"}', 'abc', (1, 1)),
    ('{"Output": "abc"}', 'abc', (-1, 0)),
    ('{"output ": "abc"}', 'abc', (-1, 0)),
    ('{"output": "abc", "output": "x"}', 'abc', (0, 0)),  # duplicate keys: last wins
    ('{"output": "x", "output": "abc"}', 'abc', (1, 1)),
    ('{"output": "abc", "output": null}', 'abc', (0, 0)),
    ('{"output": {"output": "abc"}}', 'abc', (0, 0)),
    # numbers and constants
    ('{"output": "abc", "v": NaN, "w": Infinity, "z": -Infinity}', 'abc', (1, 1)),
    ('{"output": NaN}', 'NaN', (0, 0)),
    ('{"output": "abc", "v": -NaN}', 'abc', (-1, 0)),
    ('{"output": "abc", "v": nan}', 'abc', (-1, 0)),
    ('{"output": "abc", "v": -0.5e-3, "w": 1E+9, "x": 0, "y": -0}', 'abc', (1, 1)),
    ('{"output": "abc", "v": 01}', 'abc', (-1, 0)),
    ('{"output": "abc", "v": 1.}', 'abc', (-1, 0)),
    ('{"output": "abc", "v": .5}', 'abc', (-1, 0)),
    ('{"output": "abc", "v": 1e}', 'abc', (-1, 0)),
    ('{"output": "abc", "v": +1}', 'abc', (-1, 0)),
    ('{"output": "abc", "v": [1, 2, ]}', 'abc', (-1, 0)),
    ('{"output": "abc",}', 'abc', (-1, 0)),
    # \{ \} and parentheses (second text)
    ('\\{"output": "abc"\\}', 'abc', (1, 1)),
    ('{"output": ("abc")}', 'abc', (0, 0)),
    ('{"output": "(abc)"}', '(abc)', (1, 1)),
    ('{"output": "(abc)", "x": (1)}', '[abc]', (1, 1)),  # the rewrite hits strings
    # \boxed (third text, taken from the *transformed* text)
    ('\\boxed{\\{"output": "abc"\\}}', 'abc', (1, 1)),
    ('$\\boxed{\\left\\{"output": "abc"\\right\\}}$', 'abc', (1, 1)),
    ('\\boxed\\{\\{"output": "abc"\\}\\}', 'abc', (1, 1)),  # \boxed{ only after rewrite
    ('\\boxed{\\{"output": "a\\\\\\\\b"\\}}', 'a\\b', (1, 1)),
    ('\\boxed{\\{"output": "a\\\\\\{b}"\\}}', 'a{b}', (1, 1)),  # \\\\{ -> \\{ -> {
    ('\\boxed{\\{"output": "a\\le\\leftftb"\\}}', 'ab', (-1, 0)),  # one replace pass
    ('\\boxed{"output": "abc"}', 'abc', (1, 1)),  # plain braces: first text
    ('\\boxed{"abc"', 'abc', (-1, 0)),
    ('\\boxed{', 'abc', (-1, 0)),
    ('\\boxed{\\{"output": "abc"\\} x', 'abc', (-1, 0)),
    # big integers: ValueError escapes the paper's try -> -1 with no further fallback
    ('{"output": "abc", "n": %s}' % OK_INT, 'abc', (1, 1)),
    ('{"output": "abc", "n": -%s}' % OK_INT, 'abc', (1, 1)),
    ('{"output": "abc", "n": %s}' % BIG, 'abc', (-1, 0)),
    ('{"output": "abc", "n": -%s}' % BIG, 'abc', (-1, 0)),
    ('{"output": "abc", "n": %s.5}' % BIG, 'abc', (1, 1)),
    ('{"output": "abc", "n": %se3}' % BIG, 'abc', (1, 1)),
    ('{"output": "abc", "n": %s.}' % BIG, 'abc', (-1, 0)),
    ('```json\n[%s, x]\n```' % OK_INT + BOX_OK, 'abc', (1, 1)),
    ('```json\n[%s, x]\n```' % BIG + BOX_OK, 'abc', (-1, 0)),
    ('```json\n[x, %s]\n```' % BIG + BOX_OK, 'abc', (1, 1)),  # the error comes first
    ('```json\n[True, %s]\n```' % BIG + BOX_OK, 'abc', (-1, 0)),  # aborts in the retry
    ('```json\n%s\n```' % BIG + BOX_OK, 'abc', (-1, 0)),
    ('```json\n%s' % BIG + BOX_OK, 'abc', (-1, 0)),
    # nesting depth (MAX_JSON_DEPTH = 256, top level = 1)
    ('{"output": "abc", "x": %s%s}' % ('[' * 255, ']' * 255), 'abc', (1, 1)),
    ('{"output": "abc", "x": %s%s}' % ('[' * 256, ']' * 256), 'abc', (-1, 0)),
    ('{"output": "abc", "x": %s1%s}' % ('{"a":' * 255, '}' * 255), 'abc', (1, 1)),
    ('{"output": "abc", "x": %s1%s}' % ('{"a":' * 256, '}' * 256), 'abc', (-1, 0)),
    ('```json\n' + '[' * 300 + '\n```' + BOX_OK, 'abc', (-1, 0)),
    ('```json\n[-' + '[' * 300 + '\n```' + BOX_OK, 'abc', (1, 1)),  # the error comes first
    ('```json\n' + '[' * 2000 + ']' * 2000 + '\n```' + BOX_OK, 'abc', (-1, 0)),
    ('```json\n["' + '[' * 3000 + '"]\n```', 'abc', (-1, 0)),  # brackets in a string
    ('{"output": "' + '[' * 3000 + '"}', '[' * 3000, (1, 1)),
    ('{"output": "é"}', 'é', (1, 1)),
    (b'{"output": "\xc3\xa9"}', 'é', (1, 1)),
    # invalid UTF-8 (bytes responses)
    (b'{"output": "ab\xffc"}', 'ab?c', (0, 0)),
    (b'{"output": "abc", "x": "\xc3"}', 'abc', (1, 1)),
    (b'{"output": "abc"}\xc3', 'abc', (1, 1)),
    (b'{"output": "\xc3\xa9"}', '\xe9', (1, 1)),
    (b'{"output": "\xed\xa0\x80"}', 'abc', (0, 0)),  # three U+FFFD
    (b'{"output": "abc", \x80"x": 1}', 'abc', (-1, 0)),
    (b'\\boxed{\\{"output": "\xc3\\left\xa9"\\}}', '\xe9', (0, 0)),  # bytes joined, chars not
]


def _text(r):
  return r.decode('utf-8', errors='replace') if isinstance(r, bytes) else r


# ================================================================================================
# Fuzz corpus (JSON rule).
# ================================================================================================
UNICODE_WS = [
    '\u3000',
    '\u2003',
    '\x85',
    '\xa0',
    '\x1c',
    '\x1f',
    '\u2028',
    '\u205f',
    '\u1680',
    '\x0b',
    '\x0c',
    ' ',
    '\t',
    '\r',
    '\n',
]
INVALID_BYTES = [
    b'\x80',
    b'\xbf',
    b'\xc0',
    b'\xc1\xbf',
    b'\xc3',
    b'\xe2\x80',
    b'\xe0\x80',
    b'\xed\xa0\x80',
    b'\xf0\x9f\x98',
    b'\xf4\x90\x80\x80',
    b'\xf5',
    b'\xff',
    b'\xf0\x9f',
    b'\xe2',
    b'\xef\xbf\xbd',
]
REF_CHARS = string.ascii_lowercase * 3 + string.ascii_uppercase + string.digits + '«»-_|'


def _ref(rng):
  k = rng.choice([0, 1, 3, 4, 5, 6, 8, 10, 12])
  extra = '"\\/{}()é😀\t中 '
  return ''.join(
      rng.choice(REF_CHARS) if rng.random() < 0.85 else rng.choice(extra) for _ in range(k)
  )


def _json_str(rng, s):
  """A JSON string literal for s, in one of several encodings."""
  mode = rng.randrange(5)
  if mode == 0:
    return json.dumps(s)
  if mode == 1:
    return json.dumps(s, ensure_ascii=False)
  out = []
  for ch in s:
    cp = ord(ch)
    r = rng.random()
    if ch in '"\\':
      out.append('\\' + ch if r < 0.8 else '\\u%04x' % cp)
    elif cp < 0x20:
      out.append(json.dumps(ch)[1:-1] if r < 0.8 else '\\u%04X' % cp)
    elif r < 0.25:
      if cp >= 0x10000:
        v = cp - 0x10000
        hi, lo = 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)
        out.append(('\\u%04x\\u%04X' if r < 0.12 else '\\u%04X\\u%04x') % (hi, lo))
      else:
        out.append(('\\u%04x' if r < 0.12 else '\\u%04X') % cp)
    elif ch == '/' and r < 0.5:
      out.append('\\/')
    else:
      out.append(ch)
  body = ''.join(out)
  if mode == 4 and rng.random() < 0.25:  # a bad escape or a raw control character
    i = rng.randrange(len(body) + 1)
    body = (
        body[:i]
        + rng.choice(
            ['\\x', '\\u12', '\\ud83d', '\\ude00', '\t', '\r', '\\ud800\\u0041', '\\', '\x01']
        )
        + body[i:]
    )
  return '"' + body + '"'


def _sep(rng):
  return rng.choice(['', ' ', ' ', '\n', '\t', '\r\n', '  ', ' \n '])


def _scalar(rng, ref):
  r = rng.random()
  if r < 0.93:
    return rng.choice(
        [
            '1',
            '-0.5e-3',
            '123',
            '0',
            '1E+9',
            'null',
            'true',
            'false',
            'NaN',
            'Infinity',
            '-Infinity',
            '[]',
            '{}',
            '"x"',
            '[1, 2]',
            json.dumps([ref]),
            '{"v": %s}' % json.dumps(ref),
            '"a}b"',
            '"{"',
        ]
    )
  if r < 0.99:
    return rng.choice(
        [
            'True',
            'False',
            'None',
            '1.',
            '01',
            '-',
            "'abc'",
            '(1, 2)',
            '[1, (2)]',
            'nul',
            'Nan',
            '-Infinit',
            '-NaN',
            '.5',
            '+1',
            '1e',
            '[1,]',
        ]
    )
  return rng.choice(['7' * 4300, '7' * 4301, '-' + '7' * 4301, '7' * 4301 + '.5'])


def _value(rng, ref):
  r = rng.random()
  if r < 0.55:
    return _json_str(rng, ref)
  if r < 0.7:
    wrong = ref + rng.choice(['x', ' ', '!']) if rng.random() < 0.5 else ref[::-1] + 'q'
    return _json_str(rng, wrong)
  if r < 0.75:
    return "'" + ref + "'"
  if r < 0.8:
    return '(' + _json_str(rng, ref) + ')'
  return _scalar(rng, ref)


def _key(rng):
  return rng.choice(
      ['"output"'] * 40
      + [
          '"outp\\u0075t"',
          '"\\u006Futput"',
          '"Output"',
          '"output "',
          "'output'",
          'output',
          '"out\\nput"',
          '"\\u006f\\u0075\\u0074\\u0070\\u0075\\u0074"',
      ]
  )


def _object(rng, ref, depth=0):
  members = []
  for _ in range(rng.choice([0, 1, 1, 2, 3])):
    k = json.dumps(rng.choice(['a', 'note', 'x', 'result', 'output']))
    if depth < 2 and rng.random() < 0.2:
      v = _object(rng, ref, depth + 1)
    else:
      v = _scalar(rng, ref) if rng.random() < 0.6 else _json_str(rng, _ref(rng))
    members.append(k + _sep(rng) + ':' + _sep(rng) + v)
  if rng.random() < 0.93:
    pos = rng.randrange(len(members) + 1)
    members.insert(pos, _key(rng) + _sep(rng) + ':' + _sep(rng) + _value(rng, ref))
    if rng.random() < 0.12:  # duplicate "output"
      members.insert(rng.randrange(len(members) + 1), '"output":' + _sep(rng) + _value(rng, ref))
  if rng.random() < 0.05:
    nest = rng.choice([10, 100, 200, 254, 255, 256, 400, 1500])
    members.append('"deep": ' + '[' * nest + ']' * nest)
  body = (',' + _sep(rng)).join(members)
  if rng.random() < 0.04:
    body += ','
  return '{' + _sep(rng) + body + _sep(rng) + '}'


PROSE = [
    'Let me think.',
    'The function reverses x.',
    'So the result is',
    'Therefore:',
    'We get «ab».',
    'Step 1: func_3(x)',
    '$x^2$',
    'f(x) = (x + 1)',
    'True or False? None.',
]
TRICKY_PROSE = [
    'set {a, b}',
    'use \\{ and \\}',
    'a } stray',
    'a { stray',
    '\\left( x \\right)',
    '"quoted {text}"',
    'backslash \\\\ pair',
    '```python\nprint(1)\n```',
    '```',
    '\\boxed{x}',
]


def _prose(rng, k=None):
  k = rng.randrange(0, 4) if k is None else k
  return ' '.join(rng.choice(TRICKY_PROSE if rng.random() < 0.12 else PROSE) for _ in range(k))


def _boxify(rng, obj):
  body = obj.replace('{', '\\{').replace('}', '\\}') if rng.random() < 0.8 else obj
  if rng.random() < 0.3:
    body = '\\left' + body + '\\right'
  if rng.random() < 0.2:
    body = body.replace('\\', '\\\\')
  if rng.random() < 0.1:
    body = body.replace('\\left', '\\le\\leftft')
  return '\\boxed{' + body + '}'


MUTATION_CHARS = list('{}[]()":,\\ \t\r\n`') + [
    '\\{',
    '\\}',
    '```',
    '```json',
    '\\boxed{',
    'True',
    'None',
    '\\left',
    '\\right',
    '\\\\',
    '\u3000',
    '\x85',
    '«',
    '»',
    'é',
    '😀',
    '\x00',
    '-',
    '.',
    'e',
    '0',
    'u',
    '\\u',
]


def _mutate(rng, s):
  for _ in range(rng.randrange(1, 4)):
    i = rng.randrange(len(s) + 1)
    op = rng.random()
    if op < 0.4:
      s = s[:i] + rng.choice(MUTATION_CHARS) + s[i:]
    elif op < 0.7:
      s = s[:i] + s[i + 1 :]
    else:
      s = s[:i] + rng.choice(MUTATION_CHARS) + s[i + 1 :]
  return s


def _response(rng, ref):
  obj = _object(rng, ref)
  kind = rng.choices(range(12), weights=[14, 14, 8, 10, 10, 8, 6, 8, 4, 3, 3, 3])[0]
  ws = lambda: ''.join(rng.choice(UNICODE_WS) for _ in range(rng.randrange(3)))  # noqa: E731
  if kind == 0:
    r = _prose(rng) + ' ' + obj + ' ' + _prose(rng)
  elif kind == 1:
    r = _prose(rng) + '\n```json' + ws() + obj + ws() + '```' + _prose(rng)
  elif kind == 2:  # unclosed fence, the last character decides
    r = _prose(rng) + '```json\n' + obj
    r += rng.choice(['', '\n', ' ', 'é', '😀', '}', 'x', '  '])
  elif kind == 3:  # several objects / fences
    parts = [_object(rng, ref) for _ in range(rng.randrange(2, 4))]
    fenced = [('```json\n' + p + '\n```' if rng.random() < 0.3 else p) for p in parts]
    r = (' ' + _prose(rng, 1) + ' ').join(fenced)
  elif kind == 4:
    r = _prose(rng) + ' ' + _boxify(rng, obj) + rng.choice(['', '$', '.', ' }'])
  elif kind == 5:  # fence that fails, then a boxed answer
    r = (
        '```json\n'
        + rng.choice(['null', '{}', '[1, x]', "{'output': 1}", obj])
        + '\n```\n'
        + _boxify(rng, obj)
    )
  elif kind == 6:
    r = obj.replace('{', '\\{').replace('}', '\\}')
  elif kind == 7:  # parentheses and Python literals
    r = _prose(rng) + obj.replace('[', '(').replace(']', ')') + ' (done)'
  elif kind == 8:
    r = rng.choice(
        [
            '',
            ' ',
            '```json',
            '```json\n',
            '{}',
            '{',
            '}',
            '\\boxed{',
            'null',
            '```json null ```',
            '```json\n\u3000\n```',
        ]
    )
  elif kind == 9:  # long
    r = ' '.join(rng.choice(PROSE) for _ in range(rng.randrange(60, 250))) + obj
  elif kind == 10:  # deep nesting, with or without an error before the deep part
    nest = rng.choice([50, 254, 255, 256, 257, 600, 1500])
    pre = rng.choice(['', '-', '1 ', 'x'])
    r = (
        '```json\n['
        + pre
        + '[' * nest
        + ']' * rng.choice([0, nest])
        + ']\n```'
        + rng.choice(['', _boxify(rng, obj)])
    )
  else:  # big integers in the different passes
    big = '7' * rng.choice([4300, 4301])
    r = rng.choice(
        [
            '```json\n[%s, x]\n```' % big,
            '```json\n[True, %s]\n```' % big,
            '```json\n[x, %s]\n```' % big,
            '{"output": %s}' % big,
            '```json\n%s' % big,
        ]
    ) + rng.choice(['', _boxify(rng, obj)])
  if rng.random() < 0.2:
    r = _mutate(rng, r)
  return r


def _to_bytes(rng, r):
  b = r.encode('utf-8')
  for _ in range(rng.randrange(1, 4)):
    where = rng.random()
    if where < 0.3:
      i = len(b)  # at the end (drop-the-last-character rule)
    elif where < 0.6 and b'"' in b:
      i = rng.choice([k for k in range(len(b)) if b[k : k + 1] == b'"']) + 1  # in a string
    else:
      i = rng.randrange(len(b) + 1)
      while i < len(b) and 0x80 <= b[i] <= 0xBF:  # keep valid characters whole
        i += 1
    b = b[:i] + rng.choice(INVALID_BYTES) + b[i:]
  return b


def json_fuzz_corpus(n=N_FUZZ_JSON, seed=FUZZ_SEED):
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    ref = _ref(rng)
    r = _response(rng, ref)
    if rng.random() < 0.2:
      r = _to_bytes(rng, r)
    out.append((r, ref))
  return out


# ================================================================================================
# Shared device run (one batch for every JSON case: each padded shape compiles once).
# ================================================================================================
@pytest.fixture(scope='module')
def json_runs():
  fuzz = json_fuzz_corpus()
  hand = [(r, ref) for r, ref, _ in JSON_CASES]
  allcases = hand + fuzz
  ov = [False] * len(allcases) + [True, True]
  allcases = allcases + [('{"output": "abc"}', 'abc'), ('', 'abc')]
  s, a = device_scoring.score_batch(
      [r for r, _ in allcases], [ref for _, ref in allcases], overlong=ov, min_bucket=256
  )  # fewer distinct shapes to compile
  return dict(hand=hand, fuzz=fuzz, dev_s=s, dev_a=a, n_hand=len(hand))


def test_hand_cases_python():
  bad = []
  for r, ref, want in JSON_CASES:
    got = scoring.score(_text(r), ref)
    if got != want:
      bad.append((r[:80], ref[:20], want, got))
  assert not bad, bad


def test_hand_cases_oracle():
  for r, ref, want in JSON_CASES:
    assert oracle_score(_text(r), ref)[0] == want[0], (_text(r)[:80], ref)


def test_oracle_depth_pin():
  # The pinned decoder is json.loads below the limit, and aborts (not JSONDecodeError) above.
  for k in (1, 100, scoring.MAX_JSON_DEPTH):
    assert _oracle_loads('[' * k + ']' * k) == json.loads('[' * k + ']' * k)
  with pytest.raises(_TooDeep):
    _oracle_loads('[' * 257 + ']' * 257)
  with pytest.raises(json.JSONDecodeError):
    _oracle_loads('[-' + '[' * 300)


def test_hand_cases_device(json_runs):
  n = json_runs['n_hand']
  got = list(zip(json_runs['dev_s'][:n].tolist(), json_runs['dev_a'][:n].tolist()))
  bad = [(r[:80], ref[:20], want, g) for (r, ref, want), g in zip(JSON_CASES, got) if g != want]
  assert not bad, bad


def test_overlong(json_runs):
  assert scoring.score('{"output": "abc"}', 'abc', overlong=True) == (-1, 0)
  assert scoring.score('{"output": "abc"}', 'abc', overlong=False) == (1, 1)
  assert json_runs['dev_s'][-2:].tolist() == [-1, -1]
  assert json_runs['dev_a'][-2:].tolist() == [0, 0]


def test_fuzz_reference_matches_oracle(json_runs):
  bad = []
  for r, ref in json_runs['fuzz']:
    text = _text(r)
    want = oracle_score(text, ref)[0]
    got = scoring.score(text, ref)
    if got[0] != want or got[1] != int(want == 1):
      bad.append((text[:120], ref, want, got))
  assert not bad, (len(bad), bad[:5])


def test_fuzz_device_matches_reference(json_runs):
  n = json_runs['n_hand']
  fuzz = json_runs['fuzz']
  dev = list(
      zip(
          json_runs['dev_s'][n : n + len(fuzz)].tolist(),
          json_runs['dev_a'][n : n + len(fuzz)].tolist(),
      )
  )
  bad = [
      (r[:160], ref, scoring.score(_text(r), ref), d)
      for (r, ref), d in zip(fuzz, dev)
      if scoring.score(_text(r), ref) != d
  ]
  assert not bad, (len(bad), bad[:5])


def test_fuzz_is_not_vacuous(json_runs):
  fuzz = json_runs['fuzz']
  scores, stages = {}, {}
  for r, ref in fuzz:
    sc, st = oracle_score(_text(r), ref)
    scores[sc] = scores.get(sc, 0) + 1
    stages[(sc, st)] = stages.get((sc, st), 0) + 1
  n = len(fuzz)
  for sc in (-1, 0, 1):
    assert scores.get(sc, 0) >= 0.1 * n, scores
  for key in [
      (1, 'p1'),
      (1, 'p2'),
      (1, 'box'),
      (0, 'p1'),
      (0, 'p2'),
      (0, 'box'),
      (-1, 'abort'),
      (-1, None),
      (-1, 'p1'),
  ]:
    assert stages.get(key, 0) >= 20, (key, stages)
  assert sum(isinstance(r, bytes) for r, _ in fuzz) >= 0.15 * n
  assert sum(len(_text(r)) > 2000 for r, _ in fuzz) >= 50
  assert sum(r in ('', b'') for r, _ in fuzz) >= 5


def test_extract_answer():
  assert scoring.extract_answer('x {"a": 1} y {"output": (True)}') == {'output': [True]}
  assert scoring.extract_answer('nothing') is None
  assert scoring.extract_answer('{"output": "a", "n": %s}' % BIG) is None  # aborted
  assert scoring.extract_answer(b'{"output": "\xff"}') == {'output': '\ufffd'}
  assert scoring.extract_answer('```json\n[1, 2]\n```') == [1, 2]


def test_constants():
  assert scoring.MAX_JSON_DEPTH == 256 and device_scoring.MAX_JSON_DEPTH == 256
  assert scoring.MAX_INT_DIGITS == 4300


# ================================================================================================
# Trace format.
# ================================================================================================
def test_parse_trace():
  r = ";func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnqw;adfghijnqw"
  steps, ans = scoring.parse_trace(r)
  assert steps == [
      ("func_7('fgi','dnqjwha')", 'fdgniqjwha'),
      ("func_3('fdgniqjwha')", 'adfghijnqw'),
  ]
  assert ans == 'adfghijnqw'
  assert scoring.parse_trace('abc') == ([], None)
  assert scoring.parse_trace('') == ([], None)
  assert scoring.parse_trace(';') == ([], '')
  assert scoring.parse_trace('pre;x') == ([], 'x')
  assert scoring.parse_trace(';a=b=c;noeq;;ans') == (
      [('a=b', 'c'), ('noeq', None), ('', None)],
      'ans',
  )
  assert scoring.parse_trace(";f('=')=;x") == ([("f('=')", '')], 'x')


TRACE_CASES = [
    (
        ";func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnqw;adfghijnqw",
        'adfghijnqw',
        (1, 1),
    ),
    (
        ";func_7('fgi','dnqjwha')=fdgniqjwha;func_3('fdgniqjwha')=adfghijnqw;adfghijnqx",
        'adfghijnqw',
        (0, 0),
    ),
    (';func_3(x)=abc;abc ', 'abc', (0, 0)),
    ('abc', 'abc', (-1, 0)),
    ('', 'abc', (-1, 0)),
    (';', '', (1, 1)),
    (';', 'a', (0, 0)),
    (';abc', 'abc', (1, 1)),
    (';f(x)=abc;', 'abc', (0, 0)),
    (';f(x)=«a»;«a»', '«a»', (1, 1)),
    (b';f(x)=a;a\xff', 'a', (0, 0)),
]


def _trace_fuzz(n=N_FUZZ_TRACE, seed=FUZZ_SEED + 1):
  rng = random.Random(seed)
  alpha = string.ascii_lowercase + '«»-_|;=é'
  out = []
  for _ in range(n):
    vals = [
        ''.join(rng.choice(string.ascii_lowercase + '«»') for _ in range(rng.randrange(0, 9)))
        for _ in range(rng.randrange(1, 5))
    ]
    steps = ''.join(
        ";func_%d('%s')=%s" % (rng.randrange(25), vals[i], vals[i + 1])
        for i in range(len(vals) - 1)
    )
    r = steps + ';' + vals[-1]
    ref = vals[-1]
    k = rng.random()
    if k < 0.15:
      r = r[: rng.randrange(len(r) + 1)]  # truncated
    elif k < 0.25:
      r = r.replace(';', '')  # no ';'
    elif k < 0.35:
      r = r.replace('=', '', 1)  # '=' missing
    elif k < 0.45:
      ref = ref + rng.choice(alpha)  # wrong
    elif k < 0.5:
      r = ';' * rng.randrange(0, 4)
    elif k < 0.55:
      r = r + ';' * rng.randrange(1, 3)
    if rng.random() < 0.1:
      ref = rng.choice(['', ';', 'a;b', ref])
    if rng.random() < 0.1:
      b = r.encode('utf-8')
      i = rng.randrange(len(b) + 1)
      while i < len(b) and 0x80 <= b[i] <= 0xBF:
        i += 1
      r = b[:i] + rng.choice(INVALID_BYTES) + b[i:]
    out.append((r, ref))
  return out


def test_trace_cases_and_fuzz():
  fuzz = _trace_fuzz()
  cases = [(r, ref) for r, ref, _ in TRACE_CASES] + fuzz
  ov = [False] * len(cases) + [True]
  cases.append((';abc', 'abc'))
  ds, da = device_scoring.score_batch(
      [r for r, _ in cases], [ref for _, ref in cases], overlong=ov, fmt='trace'
  )
  for (r, ref, want), s, a in zip(TRACE_CASES, ds, da):
    assert scoring.score_trace(_text(r), ref) == want, (r, ref)
    assert (int(s), int(a)) == want, (r, ref)
  assert (ds[-1], da[-1]) == (-1, 0)
  assert scoring.score_trace(';abc', 'abc', overlong=True) == (-1, 0)
  py = [scoring.score_trace(_text(r), ref) for r, ref in fuzz]
  n = len(TRACE_CASES)
  dev = list(zip(ds[n : n + len(fuzz)].tolist(), da[n : n + len(fuzz)].tolist()))
  bad = [(r, ref, p, d) for (r, ref), p, d in zip(fuzz, py, dev) if p != d]
  assert not bad, (len(bad), bad[:5])
  counts = {c: sum(p[0] == c for p in py) for c in (-1, 0, 1)}
  assert min(counts.values()) >= 0.1 * len(fuzz), counts
  # parse_trace is consistent with score_trace's answer
  for r, ref in fuzz[:500]:
    steps, ans = scoring.parse_trace(_text(r))
    assert (ans is None) == (scoring.score_trace(_text(r), ref)[0] == -1)


# ================================================================================================
# JAX composition: jit inside another function, vmap, bytes input, errors.
# ================================================================================================
def _encode(rows, width):
  arr = np.zeros((len(rows), width), np.int32)
  for i, b in enumerate(rows):
    arr[i, : len(b)] = np.frombuffer(b, np.uint8)
  return arr, np.array([len(b) for b in rows], np.int32)


def test_score_json_under_jit_and_vmap():
  resp = [
      b'{"output": "ab"}',
      b'{"output": "ax"}',
      b"{'output': 'ab'}",
      b'\\boxed{\\{"output": "ab"\\}}',
  ]
  ref = [b'ab'] * 4
  r, rl = _encode(resp, 64)
  q, ql = _encode(ref, 16)
  ol = np.zeros(4, bool)

  @jax.jit
  def reward_sum(r, rl, q, ql, ol, w):
    s, a = device_scoring.score_json(r, rl, q, ql, ol)
    return jnp.sum(s * w), a

  total, acc = reward_sum(r, rl, q, ql, ol, jnp.arange(1, 5))
  assert int(total) == 1 * 1 + 2 * 0 + 3 * -1 + 4 * 1
  assert acc.tolist() == [1, 0, 0, 1]
  # vmap over a leading axis of two batches
  rr = np.stack([r, r[::-1]])
  s, a = jax.jit(jax.vmap(device_scoring.score_json))(
      rr, np.stack([rl, rl[::-1]]), np.stack([q, q]), np.stack([ql, ql]), np.stack([ol, ol])
  )
  assert s.tolist() == [[1, 0, -1, 1], [1, -1, 0, 1]]
  ts, ta = jax.jit(device_scoring.score_trace)(
      *_encode([b';x=ab;ab', b'ab'], 16), *_encode([b'ab', b'ab'], 16), np.zeros(2, bool)
  )
  assert ts.tolist() == [1, -1] and ta.tolist() == [1, 0]


def test_benchmark_fn():
  run = device_scoring.benchmark_fn([';x=ab;ab', 'ab'], ['ab', 'ab'], fmt='trace')
  assert run() is None


def test_score_batch_inputs():
  s, a = device_scoring.score_batch([], [])
  assert s.shape == (0,) and a.shape == (0,)
  with pytest.raises(ValueError):
    device_scoring.score_batch(['a', 'b'], ['a'])
  with pytest.raises(ValueError):
    device_scoring.score_batch(['a'], [b'a'])
  with pytest.raises(ValueError):
    device_scoring.score_batch(['a'], [1])
  with pytest.raises(ValueError):
    device_scoring.score_batch(['a'], ['a'], overlong=[True, False])
  with pytest.raises(ValueError):
    device_scoring.score_batch(['a'], ['a'], fmt='xml')
  with pytest.raises(ValueError):
    device_scoring.score_batch([3], ['a'])
  with pytest.raises(ValueError):
    device_scoring.score_batch(['a'], ['\ufffd'])
  with pytest.raises(ValueError):
    device_scoring.score_batch('abc', 'abc')
  with pytest.raises(ValueError):
    device_scoring.score_batch(['a'], ['a'], min_bucket=0)
  with pytest.raises(TypeError):
    scoring.score('x', 3)


# ================================================================================================
# Shape-aware trace reward (strings_trace_shape): Python reference == device, bit for bit.
# ================================================================================================
_SHAPE_T = ";func_7('fgi','dnq')=fdgniq;func_3('fdgniq')=dfginq;dfginq"
# (response, overlong, expected (score, acc)) for the L2 reference above: n = 2 steps.
SHAPE_CASES = [
    (_SHAPE_T, False, (1.0, 1)),  # correct
    (_SHAPE_T, True, (0.5, 0)),  # correct, cut
    (";func_7('fgi','dnq')=fdgniq;func_3('fdgniq')=dfgin;dfgin", False, (0.375, 0)),  # step 2
    (";func_7('fgi','dnq')=fdgniq;func_3('fdgniq')=dfgin;dfginq", False, (0.875, 1)),
    (";func_7('fgi','dnq')=fdgniq;fdgniq", False, (0.25, 0)),  # one step, inner
    (";func_3(func_7('fgi','dnq'))=dfginq;dfginq", False, (0.5, 1)),  # one step, right ans
    (";func_3(func_7('fgi','dnq'))=dfgin;dfgin", False, (0.0, 0)),  # one step, outer
    (";func_3('fgi')=fgi;func_7('fgi','dnq')=fdgniq;fdgniq", False, (0.0, 0)),  # wrong order
    (";func_31('fgi','dnq')=fdgniq;func_3('fdgniq')=dfginq;dfginq", False, (0.75, 1)),  # id
    (";func_7('fgi','dnq')=fdgniq;func_31('fdgniq')=dfginq;dfginq", False, (0.75, 1)),
    (";func_7('fgi','dnq')=fdgniq;func_3('fdgnq')=dfgnq;dfgnq", False, (0.375, 0)),  # hand-over
    (
        ";func_7('fgi','dnq')=fdgniq;func_3('fdgniq')=dfginq;func_3('dfginq')=dfginq;dfginq",
        False,
        (0.8333333730697632, 1),
    ),  # an extra step
    (";func_7('fgi','dnq')=fdgniq;func_3('fdg", True, (0.25, 0)),  # truncated
    (";func_7('fgi','dnq')=fdgniq;func_3('fdg", False, (0.25, 0)),
    (";func_7('fgi','dnq')=fdgn", True, (0.0, 0)),  # cut in step 1
    (";func_7('fgi','dnq')=fdgniq;func_3('fdgniq')=dfginq;dfginq", True, (0.5, 0)),
    ("func_7('fgi','dnq')=fdgniq", False, (-1.0, 0)),  # no ';'
    ('', False, (-1.0, 0)),
    ('', True, (-1.0, 0)),
    (';dfginq', False, (0.5, 1)),  # answer only
    (';;;dfginq', False, (0.5, 1)),  # empty steps
    ("junk;func_7('fgi','dnq')=fdgniq;func_3('fdgniq')=dfginq;dfginq", False, (1.0, 1)),
    (';func_7=fdgniq;func_3=dfginq;dfginq', False, (0.5, 1)),  # no '(' at all
    (";func_7 ('fgi','dnq')=fdgniq;func_3('fdgniq')=dfginq;dfginq", False, (0.75, 1)),
    (
        ";func_7('fgi','dnq')=fdgniq;func_3('fdgniq')=dfginq;dfginq;",
        False,
        (0.3333333432674408, 0),
    ),  # trailing ';'
    (b";func_7('fgi','dnq')=fdgniq;func_3('fdgniq')=df\xffinq;df\xffinq", False, (0.375, 0)),
]


def _shape_rows(items):
  width = max(8, max(len(b) for b in items))
  arr = np.zeros((len(items), width), np.int32)
  lens = np.zeros(len(items), np.int32)
  for i, b in enumerate(items):
    arr[i, : len(b)] = np.frombuffer(b, np.uint8)
    lens[i] = len(b)
  return arr, lens


def _shape_device(resps, targets, overlong, **kw):
  resp, rl = _shape_rows([r if isinstance(r, bytes) else r.encode() for r in resps])
  ref, fl = _shape_rows([t.encode() for t in targets])
  fn = jax.jit(lambda *a: device_scoring.score_trace_shape(*a, **kw))
  args = (resp, rl, ref, fl, np.asarray(overlong, bool))
  assert 'callback' not in str(jax.make_jaxpr(fn)(*args))
  s, a = fn(*args)
  assert s.dtype == jnp.float32 and a.dtype == jnp.int32
  return np.asarray(s), np.asarray(a)


def test_trace_shape_hand_cases():
  resps = [c[0] for c in SHAPE_CASES]
  over = [c[1] for c in SHAPE_CASES]
  for r, o, want in SHAPE_CASES:
    assert scoring.score_trace_shape(r, _SHAPE_T, overlong=o) == want, r
  s, a = _shape_device(resps, [_SHAPE_T] * len(resps), over)
  for i, (r, o, want) in enumerate(SHAPE_CASES):
    got = scoring.score_trace_shape(r, _SHAPE_T, overlong=o)
    assert np.float32(s[i]).tobytes() == np.float32(got[0]).tobytes() and a[i] == got[1], r
  # The paper's truncation rule on request; other dyadic weights.
  kw = dict(shape_credit=0.5, step_credit=0.125, answer_credit=1.0, overlong_penalty=True)
  s, a = _shape_device(resps, [_SHAPE_T] * len(resps), over, **kw)
  for i, (r, o, _) in enumerate(SHAPE_CASES):
    got = scoring.score_trace_shape(r, _SHAPE_T, overlong=o, **kw)
    assert (float(s[i]), int(a[i])) == got, r
    if o:
      assert got == (-1.0, 0)
  # A one-step answer now earns less than a full trace with a wrong second value (the flaw
  # of the step-credit reward, which gives both 0.25).
  one, two = SHAPE_CASES[4][0], SHAPE_CASES[2][0]
  assert (
      scoring.score_trace_steps(one, _SHAPE_T)
      == scoring.score_trace_steps(two, _SHAPE_T)
      == (0.25, 0)
  )
  assert scoring.score_trace_shape(one, _SHAPE_T)[0] < scoring.score_trace_shape(two, _SHAPE_T)[0]


def test_trace_shape_counts():
  c = scoring.trace_shape_counts(SHAPE_CASES[7][0], _SHAPE_T)
  assert c == dict(format_ok=True, ref_steps=2, steps=2, id_hits=0, step_hits=0, answer_ok=False)
  c = scoring.trace_shape_counts(SHAPE_CASES[2][0], _SHAPE_T)
  assert (c['id_hits'], c['step_hits']) == (2, 1)
  with pytest.raises(TypeError):
    scoring.score_trace_shape(1, _SHAPE_T)
  with pytest.raises(TypeError):
    scoring.score_trace_shape('x', None)


def _shape_variants(p, other, rng):
  """Generated responses for trace problem p: correct, cut, one-step, wrong order, wrong ids,
  wrong values, extra and missing steps, and steps of another problem."""
  t = p.target
  pieces = t.split(';')
  steps, ans = pieces[1:-1], pieces[-1]
  join = lambda ss, a: ';' + ';'.join(ss) + ';' + a  # noqa: E731
  out = [
      t,
      t[: rng.randrange(1, len(t))],
      t[:-1],
      t + 'x',
      ';' + ans,
      'no separator',
      join(steps[:1], steps[0].rpartition('=')[2]),
      join(steps[::-1], ans),
      join([s.replace('func_', 'func_1', 1) for s in steps], ans),
      join([s.replace('(', ' (', 1) for s in steps], ans),
      join(steps[:-1] + [steps[-1] + 'q'], ans + 'q'),
      join(steps + steps[-1:], ans),
      join(steps[1:], ans),
      other.target,
      join(steps[:1] + other.target.split(';')[1:-1], ans),
      join([steps[0].replace("'", '', 1)] + steps[1:], ans),
  ]
  if len(steps) > 1:
    out.append(
        join([steps[0], steps[1].replace(steps[0].rpartition('=')[2], 'ab', 1)] + steps[2:], ans)
    )
  return out


def test_trace_shape_device_equals_reference_on_generated_traces():
  from compfn.tasks.strings import functions
  from compfn.tasks.strings.generator import generate_trace

  rng = random.Random(7)
  problems = generate_trace(functions.TRAIN_FUNCTIONS, 1, 3, 120, seed=5) + generate_trace(
      functions.TEST_FUNCTIONS, 1, 4, 80, seed=6
  )
  resps, targets, over = [], [], []
  for i, p in enumerate(problems):
    for v in _shape_variants(p, problems[(i + 1) % len(problems)], rng):
      resps.append(v)
      targets.append(p.target)
      over.append(rng.random() < 0.15)
  s, a = _shape_device(resps, targets, over)
  bad = []
  for i, (r, t, o) in enumerate(zip(resps, targets, over)):
    want = scoring.score_trace_shape(r, t, overlong=o)
    if np.float32(s[i]).tobytes() != np.float32(want[0]).tobytes() or int(a[i]) != want[1]:
      bad.append((r, t, o, float(s[i]), int(a[i]), want))
  assert not bad, bad[:5]
  assert len({float(x) for x in s}) >= 12  # many distinct credit levels occur
  assert {-1.0, 0.0, 1.0} <= {float(x) for x in s}
  # The registered task uses these scorers.
  from compfn.tasks import registry

  task = registry.get('strings_trace_shape')
  assert task.score is scoring.score_trace_shape
  assert task.device_score.resolve() is device_scoring.score_trace_shape
  assert task.reference(problems[0]) == problems[0].target
