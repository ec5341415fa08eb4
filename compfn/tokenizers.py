"""Tokenizers: SentencePiece, HF `tokenizers` (tokenizer.json or GGUF metadata) and a char-level
one, chat templates, and the token -> bytes table used to detokenise on device.

One interface, three backends::

    tok = load_tokenizer('path/to/checkpoint')      # dir with tokenizer.json / tokenizer.model,
                                                     # a .json, a .model or a .gguf file
    tok = train_sentencepiece(lines, 512, 'workdir/spm')   # the synthetic tasks' BPE model
    tok = CharTokenizer()                            # spec/MINIATURE.md's char vocabulary

    ids = tok.encode(text)                           # no BOS unless add_special_tokens=True
    tok.decode(ids)                                  # drops special tokens by default
    prompt = tok.apply_chat_template([{'role': 'user', 'content': q}])   # + generation prompt

Special-token strings inside the text (``<|im_start|>``, ``<bos>``, ``<eos>``) are encoded as the
special token, as HF tokenizers do, so a rendered chat prompt encodes to the ids the model saw.
(verl tokenises the rendered prompt with ``add_special_tokens=False``; so does ``encode`` by
default: a template that wants BOS writes ``{{ bos_token }}`` itself.)

Detokenising on device
----------------------
``byte_table(tok) -> (table uint8[V, P], lengths int32[V])`` holds every token's bytes; special
tokens (``tok.special_ids``) have length 0. For a sequence ``ids``::

    b''.join(table[i, :lengths[i]] for i in ids)   (+ the first-piece rule below)
    .decode('utf-8', errors='replace') == tok.decode(ids, skip_special_tokens=True)

``detokenize_bytes(tok, ids)`` (also ``tok.detokenize_bytes``) is that on the host and
``jax_detokenize(table, lengths, ids, mask, first_skip)`` is the jittable batch version.

*First-piece rule (SentencePiece only).* A SentencePiece model that adds a dummy prefix
(``add_dummy_prefix``, the default) stores "hello" as ``▁hello``; its decode drops the leading
space of the *first piece that produces output* (canonical ``DecodeSentencePiece``: the check is
"nothing decoded yet and no bos-whitespace consumed"). The table keeps the space
(``▁`` -> ``b' '``); ``first_skip(tok) -> int32[V]`` is 1 for pieces that start with ``▁`` and 0
otherwise, and the detokenisers drop ``first_skip[id]`` bytes from the first token (in the
sequence, after masking and dropping specials) whose length is > 0. A token that decodes to
nothing (special, masked) does not count; a byte-fallback or unknown piece counts (its output
makes the text non-empty) and has skip 0. Byte-level BPE and the char tokenizer have no such rule
(``first_skip`` is all zeros). So one response decodes as verl's
``tokenizer.decode(response_ids)`` does: as its own sequence.

*Invalid UTF-8.* Python's ``errors='replace'`` and Rust's ``from_utf8_lossy`` (HF tokenizers)
both write one U+FFFD per maximal invalid subsequence; SentencePiece's decode writes one U+FFFD
per invalid byte of a byte-fallback run. ``tok.text_from_bytes(b)`` applies the backend's rule,
so ``tok.text_from_bytes(tok.detokenize_bytes(ids)) == tok.decode(ids)`` for every sequence and
every backend; with plain ``.decode('utf-8', 'replace')`` the two agree except for the number of
U+FFFD characters where a SentencePiece byte-fallback run is invalid UTF-8 (e.g. a response that
ends inside a multi-byte character). The on-device scorers work on the bytes, where both agree.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from datetime import datetime
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = [
    'Tokenizer',
    'SentencePieceTokenizer',
    'HFTokenizer',
    'CharTokenizer',
    'load_tokenizer',
    'train_sentencepiece',
    'tokenizer_from_gguf',
    'SPM_TRAIN_OPTIONS',
    'render_chat_template',
    'PLAIN_TEMPLATES',
    'byte_table',
    'first_skip',
    'detokenize_bytes',
    'jax_detokenize',
    'bytes_to_unicode',
    'TRACE_CHARS',
    'ChatTemplateError',
]

PathLike = Union[str, os.PathLike]

# Tokens that end an assistant turn in the chat formats we use; those present as special/control
# tokens of a vocabulary join its stop ids.
END_OF_TURN_TOKENS = (
    '<|eot_id|>',
    '<|eom_id|>',
    '<|im_end|>',
    '<end_of_turn>',
    '<|end|>',
    '<|endoftext|>',
)


class ChatTemplateError(ValueError):
  """A chat template raised (``raise_exception`` in the template) or cannot be rendered."""


# --------------------------------------------------------------------------------------------
# Chat templates (HF semantics)
# --------------------------------------------------------------------------------------------

# Templates without a default system/date header, for the paper's "plain-prompt" Llama variant
# (PAPER.md §1.1: inferred; the authors' template is not published). 'llama3' is the chat template
# of Llama-3-8B-Instruct (3.0), which has no system header; 'chatml' is SmolLM2/Qwen's format
# without the default system message.
PLAIN_TEMPLATES = {
    'llama3': (
        '{% set loop_messages = messages %}{% for message in loop_messages %}'
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        '{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}'
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
        '{% endif %}'
    ),
    'chatml': (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
        "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    'gemma': (
        "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == "
        "'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + "
        "message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
    ),
}
# The family's marker token that selects a plain template.
_PLAIN_MARKERS = (
    ('<|start_header_id|>', 'llama3'),
    ('<|im_start|>', 'chatml'),
    ('<start_of_turn>', 'gemma'),
)


@functools.lru_cache(maxsize=32)
def _compile_template(template: str):
  """The template compiled as transformers does: sandboxed, trim_blocks + lstrip_blocks,
  loopcontrols, a ``{% generation %}`` no-op block, json ``tojson``, ``raise_exception``,
  ``strftime_now``."""
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class _Generation(jinja2.ext.Extension):
    tags = {'generation'}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(['name:endgeneration'], drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method('_render'), [], [], body).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )

  def strftime_now(fmt):
    return datetime.now().strftime(fmt)

  env = ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
  )
  env.filters['tojson'] = tojson
  env.globals['raise_exception'] = raise_exception
  env.globals['strftime_now'] = strftime_now
  try:
    return env.from_string(template)
  except jinja2.exceptions.TemplateSyntaxError as err:
    raise ChatTemplateError(f'chat template does not compile: {err}') from None


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = True,
    **kwargs,
) -> str:
  """Render ``template`` with HF's variables: ``messages``, ``add_generation_prompt`` and the
  keyword arguments (``bos_token``, ``eos_token``, ... ; ``tools``/``documents`` default None).
  A template that calls ``raise_exception(msg)`` raises ChatTemplateError(msg)."""
  import jinja2

  msgs = [dict(m) for m in messages]
  for m in msgs:
    if 'role' not in m or 'content' not in m:
      raise ChatTemplateError(f"each message needs 'role' and 'content', got {m!r}")
  kwargs.setdefault('tools', None)
  kwargs.setdefault('documents', None)
  try:
    return _compile_template(template).render(
        messages=msgs, add_generation_prompt=add_generation_prompt, **kwargs
    )
  except jinja2.exceptions.TemplateError as err:
    raise ChatTemplateError(f'chat template raised: {err}') from None


# --------------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------------


class Tokenizer:
  """Common interface. Backends set: ``vocab_size``, ``bos_id``/``eos_id``/``pad_id`` (None if
  absent), ``special_ids`` (dropped by ``decode(skip_special_tokens=True)``, length 0 in the
  byte table), ``stop_ids`` (end generation: EOS and end-of-turn tokens), ``chat_template``
  (str or None) and the special token strings the template sees (``bos_token``, ...)."""

  vocab_size: int
  bos_id: Optional[int] = None
  eos_id: Optional[int] = None
  pad_id: Optional[int] = None
  special_ids: frozenset = frozenset()
  stop_ids: tuple = ()
  chat_template: Optional[str] = None
  bos_token: Optional[str] = None
  eos_token: Optional[str] = None
  pad_token: Optional[str] = None
  unk_token: Optional[str] = None

  # -- to implement -------------------------------------------------------------------------
  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    raise NotImplementedError

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    raise NotImplementedError

  def token_bytes(self, i: int) -> bytes:
    """The bytes token ``i`` contributes to decoded text (not for special tokens)."""
    raise NotImplementedError

  def token_first_skip(self, i: int) -> int:
    """Bytes dropped from token ``i`` when it is the first non-empty piece (see module doc)."""
    return 0

  def text_from_bytes(self, b: bytes) -> str:
    """Decoded text of detokenised bytes, with this backend's rule for invalid UTF-8."""
    return b.decode('utf-8', errors='replace')

  # -- shared ---------------------------------------------------------------------------------
  def _check_ids(self, ids) -> list[int]:
    ids = [int(i) for i in ids]
    for i in ids:
      if not 0 <= i < self.vocab_size:
        raise ValueError(f'token id {i} out of range [0, {self.vocab_size})')
    return ids

  def detokenize_bytes(self, ids: Iterable[int]) -> bytes:
    """Host reference of the byte table: the decoded bytes of ``ids`` with special tokens
    dropped and the first-piece rule applied."""
    out, first = [], True
    for i in self._check_ids(ids):
      if i in self.special_ids:
        continue
      b = self.token_bytes(i)
      if first and b:
        b = b[self.token_first_skip(i) :]
        first = False
      out.append(b)
    return b''.join(out)

  def apply_chat_template(
      self,
      messages: Sequence[Mapping[str, Any]],
      add_generation_prompt: bool = True,
      template: Optional[str] = None,
      **kwargs,
  ) -> str:
    """Render ``messages`` with the checkpoint's chat template (HF semantics; the paper sends
    the prompt as one user message with the generation prompt). ``template``: None = the
    tokenizer's own; ``'plain'`` = the family's template without a system/date header
    (PLAIN_TEMPLATES, chosen by the vocabulary's turn markers); ``'raw'`` = the messages'
    contents concatenated (no chat format, for the synthetic-task models); any other string
    is used as the template itself."""
    if template is None:
      template = self.chat_template
      if template is None:
        raise ChatTemplateError(
            f'{type(self).__name__} has no chat template; pass '
            "template='plain', 'raw' or a template string"
        )
    elif template == 'raw':
      return ''.join(str(m['content']) for m in messages)
    elif template == 'plain':
      template = PLAIN_TEMPLATES[self.plain_family()]
    env = dict(
        bos_token=self.bos_token,
        eos_token=self.eos_token,
        unk_token=self.unk_token,
        pad_token=self.pad_token,
    )
    env.update(kwargs)
    return render_chat_template(template, messages, add_generation_prompt, **env)

  def plain_family(self) -> str:
    for marker, family in _PLAIN_MARKERS:
      if self.token_to_id(marker) is not None:
        return family
    raise ChatTemplateError(
        "template='plain' needs a Llama-3, ChatML or Gemma vocabulary "
        f'(none of {[m for m, _ in _PLAIN_MARKERS]} is a token)'
    )

  def token_to_id(self, token: str) -> Optional[int]:
    raise NotImplementedError

  def _stop_ids(self, extra: Iterable[Optional[int]] = ()) -> tuple:
    ids = {self.eos_id, *extra}
    for t in END_OF_TURN_TOKENS:
      i = self.token_to_id(t)
      if i is not None and i in self.special_ids:
        ids.add(i)
    return tuple(sorted(i for i in ids if i is not None))

  def __repr__(self):
    return (
        f'{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_id}, '
        f'eos={self.eos_id}, pad={self.pad_id}, stop={list(self.stop_ids)})'
    )


# --------------------------------------------------------------------------------------------
# SentencePiece
# --------------------------------------------------------------------------------------------

# spec/BASELINES.md §3, with num_threads=1 so the same lines give a byte-identical model.
SPM_TRAIN_OPTIONS = dict(
    model_type='bpe',
    byte_fallback=True,
    character_coverage=1.0,
    split_digits=True,
    normalization_rule_name='identity',
    remove_extra_whitespaces=False,
    pad_id=0,
    unk_id=1,
    bos_id=2,
    eos_id=3,
    num_threads=1,
)

_BYTE_PIECE = re.compile(r'^<0x([0-9A-Fa-f]{2})>$')


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece ``.model`` (ours or a checkpoint's, e.g. Gemma's).

  ``special_ids`` = control pieces (pad/bos/eos, ...) plus ``special_tokens`` (piece strings,
  e.g. Gemma's user-defined ``<start_of_turn>``/``<end_of_turn>``, which SentencePiece itself
  renders as text). ``decode`` is SentencePiece's own decode of the ids that remain.
  ``skip_special_tokens=False`` decodes all ids with SentencePiece (control pieces -> '')."""

  def __init__(
      self,
      model: Union[PathLike, bytes],
      special_tokens: Sequence[str] = (),
      chat_template: Optional[str] = None,
  ):
    import sentencepiece as spm

    if isinstance(model, (bytes, bytearray)):
      proto_bytes = bytes(model)
    else:
      if not os.path.isfile(model):
        raise FileNotFoundError(f'no SentencePiece model at {model}')
      with open(model, 'rb') as f:
        proto_bytes = f.read()
    self.model_proto = proto_bytes
    self.sp = spm.SentencePieceProcessor(model_proto=proto_bytes)
    # Normalizer flags and the unknown surface, read through the processor (no protobuf):
    # a dummy prefix makes 'a' start with '▁'; removing extra whitespace empties '  '.
    self._add_dummy_prefix = self.sp.encode('a', out_type=str)[0].startswith('\u2581')
    self._remove_extra_ws = len(self.sp.encode('  ')) == 0
    self._unk_surface = self.sp.decode([self.sp.unk_id()]) if self.sp.unk_id() >= 0 else ''
    n = self.sp.get_piece_size()
    self.vocab_size = n
    self._pieces = [self.sp.id_to_piece(i) for i in range(n)]
    self._piece_to_id = {p: i for i, p in enumerate(self._pieces)}
    ctrl = [i for i in range(n) if self.sp.is_control(i)]
    for t in special_tokens:
      if t not in self._piece_to_id:
        raise ValueError(f'special token {t!r} is not a piece of this model')
    self.special_ids = frozenset(ctrl) | frozenset(self._piece_to_id[t] for t in special_tokens)
    opt = lambda i: None if i < 0 else int(i)  # noqa: E731
    self.bos_id, self.eos_id, self.pad_id = (
        opt(self.sp.bos_id()),
        opt(self.sp.eos_id()),
        opt(self.sp.pad_id()),
    )
    self._unk_id = opt(self.sp.unk_id())
    piece = lambda i: None if i is None else self._pieces[i]  # noqa: E731
    self.bos_token, self.eos_token = piece(self.bos_id), piece(self.eos_id)
    self.pad_token, self.unk_token = piece(self.pad_id), piece(self._unk_id)
    self.chat_template = chat_template
    self.stop_ids = self._stop_ids()
    # Strings encoded as one special token: control pieces and the given special tokens.
    split = sorted((self._pieces[i] for i in self.special_ids), key=len, reverse=True)
    self._special_re = re.compile('|'.join(map(re.escape, split))) if split else None

  def token_to_id(self, token):
    return self._piece_to_id.get(token)

  def encode(self, text, add_special_tokens=False):
    """SentencePiece ids; special-token strings become their id, and the text between them
    is encoded segment by segment (with the model's dummy prefix per segment, if any).
    ``add_special_tokens`` prepends BOS."""
    ids = [self.bos_id] if add_special_tokens and self.bos_id is not None else []
    pos = 0
    if self._special_re is not None:
      for m in self._special_re.finditer(text):
        if m.start() > pos:
          ids += self.sp.encode(text[pos : m.start()])
        ids.append(self._piece_to_id[m.group()])
        pos = m.end()
    if pos < len(text):
      ids += self.sp.encode(text[pos:])
    return ids

  def decode(self, ids, skip_special_tokens=True):
    ids = self._check_ids(ids)
    if skip_special_tokens:
      ids = [i for i in ids if i not in self.special_ids]
    return self.sp.decode(ids)

  def token_bytes(self, i):
    if self.sp.is_byte(i):
      return bytes([int(_BYTE_PIECE.match(self._pieces[i]).group(1), 16)])
    if self.sp.is_control(i):
      return b''
    if self.sp.is_unknown(i):
      return self._unk_surface.encode('utf-8')
    return self._pieces[i].replace('\u2581', ' ').encode('utf-8')

  def token_first_skip(self, i):
    if not (self._add_dummy_prefix or self._remove_extra_ws):
      return 0
    if self._remove_extra_ws:
      raise NotImplementedError(
          'the first-piece rule of models with ' 'remove_extra_whitespaces=True is not supported'
      )
    if self.sp.is_byte(i) or self.sp.is_control(i) or self.sp.is_unknown(i):
      return 0
    return 1 if self._pieces[i].startswith('\u2581') else 0

  def text_from_bytes(self, b):
    # SentencePiece writes one U+FFFD per invalid byte (IsValidDecodeUTF8 consumes 1).
    out, pos = [], 0
    while pos < len(b):
      try:
        out.append(b[pos:].decode('utf-8'))
        break
      except UnicodeDecodeError as err:
        out.append(b[pos : pos + err.start].decode('utf-8'))
        out.append('\ufffd')
        pos += err.start + 1
    return ''.join(out)

  def save(self, path: PathLike):
    with open(path, 'wb') as f:
      f.write(self.model_proto)


def train_sentencepiece(
    lines: Iterable[str], vocab_size: int, model_prefix_or_dir: PathLike, **options
) -> SentencePieceTokenizer:
  """Train a BPE SentencePiece model on ``lines`` with SPM_TRAIN_OPTIONS (overridable by
  ``options``) and write ``PREFIX.model``/``PREFIX.vocab`` (a directory -> ``DIR/spm``).
  Strings containing newlines are split into lines; empty lines are skipped. Deterministic:
  the same lines and options give a byte-identical .model (num_threads=1)."""
  import sentencepiece as spm

  prefix = os.fspath(model_prefix_or_dir)
  if os.path.isdir(prefix) or prefix.endswith(os.sep):
    prefix = os.path.join(prefix, 'spm')
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  sentences = [ln for s in lines for ln in str(s).split('\n') if ln]
  if not sentences:
    raise ValueError('train_sentencepiece: no non-empty lines')
  opts = dict(SPM_TRAIN_OPTIONS)
  opts.update(options)
  opts.setdefault('minloglevel', 2)
  # Written through model_writer, so the model does not record the output path (trainer_spec
  # .model_prefix stays empty) and is byte-identical wherever it is saved.
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size, **opts
  )
  tok = SentencePieceTokenizer(buf.getvalue())
  tok.save(prefix + '.model')
  with open(prefix + '.vocab', 'w', encoding='utf-8') as f:
    for i, piece in enumerate(tok._pieces):
      f.write(f'{piece}\t{tok.sp.get_score(i):g}\n')
  return tok


# --------------------------------------------------------------------------------------------
# HF tokenizers (tokenizer.json, GGUF)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict:
  """GPT-2's byte -> printable unicode character map (byte-level BPE alphabet)."""
  bs = (
      list(range(ord('!'), ord('~') + 1))
      + list(range(ord('¡'), ord('¬') + 1))
      + list(range(ord('®'), ord('ÿ') + 1))
  )
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def _token_str(v) -> Optional[str]:
  if v is None:
    return None
  if isinstance(v, Mapping):
    return v.get('content')
  return str(v)


class HFTokenizer(Tokenizer):
  """A ``tokenizers.Tokenizer`` plus the special tokens and chat template of its
  tokenizer_config.json (or GGUF metadata). ``special_ids`` = added tokens marked special;
  ``decode`` is the tokenizers library's decode (no transformers
  ``clean_up_tokenization_spaces``)."""

  def __init__(
      self, tok, config: Optional[Mapping[str, Any]] = None, extra_stop_ids: Iterable[int] = ()
  ):
    self.tok = tok
    config = dict(config or {})
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.special_ids = frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    for name in ('bos', 'eos', 'pad', 'unk'):
      s = _token_str(config.get(f'{name}_token'))
      i = None if s is None else tok.token_to_id(s)
      if s is not None and i is None:
        raise ValueError(f'{name}_token {s!r} of the tokenizer config is not in the vocab')
      setattr(self, f'{name}_token', s)
      if name != 'unk':
        setattr(self, f'{name}_id', i)
    ct = config.get('chat_template')
    if isinstance(ct, list):  # [{'name': 'default', 'template': ...}, ...]
      named = {d.get('name'): d.get('template') for d in ct}
      ct = named.get('default', next(iter(named.values()), None))
    self.chat_template = ct
    self.add_bos_token = bool(config.get('add_bos_token', False))
    self.stop_ids = self._stop_ids(extra_stop_ids)
    dec = json.loads(tok.to_str()).get('decoder') or {}
    self._decoder_type = dec.get('type')
    self._b2u_inv = {c: b for b, c in bytes_to_unicode().items()}

  @classmethod
  def from_file(cls, path: PathLike) -> 'HFTokenizer':
    """A tokenizer.json, or a directory holding one (+ tokenizer_config.json,
    chat_template.jinja, generation_config.json when present)."""
    from tokenizers import Tokenizer as _Tok

    path = os.fspath(path)
    d = path if os.path.isdir(path) else os.path.dirname(path)
    tj = os.path.join(path, 'tokenizer.json') if os.path.isdir(path) else path
    if not os.path.isfile(tj):
      raise FileNotFoundError(f'no tokenizer.json in {path}')
    config = {}
    cfg_path = os.path.join(d, 'tokenizer_config.json')
    if os.path.isfile(cfg_path):
      with open(cfg_path, encoding='utf-8') as f:
        config = json.load(f)
    jinja_path = os.path.join(d, 'chat_template.jinja')
    if 'chat_template' not in config and os.path.isfile(jinja_path):
      with open(jinja_path, encoding='utf-8') as f:
        config['chat_template'] = f.read()
    stops = []
    gen_path = os.path.join(d, 'generation_config.json')
    if os.path.isfile(gen_path):
      with open(gen_path, encoding='utf-8') as f:
        e = json.load(f).get('eos_token_id')
      stops = [e] if isinstance(e, int) else list(e or [])
    return cls(_Tok.from_file(tj), config, stops)

  def save(self, directory: PathLike) -> str:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` (special tokens, chat template)
    so that :meth:`from_file` and transformers' ``AutoTokenizer`` load the same tokenizer.
    Returns the directory."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    self.tok.save(os.path.join(directory, 'tokenizer.json'))
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'add_bos_token': self.add_bos_token}
    for name in ('bos', 'eos', 'pad', 'unk'):
      if getattr(self, f'{name}_token', None) is not None:
        config[f'{name}_token'] = getattr(self, f'{name}_token')
    if self.chat_template is not None:
      config['chat_template'] = self.chat_template
    with open(os.path.join(directory, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
      json.dump(config, f, indent=1, ensure_ascii=False)
    return directory

  def token_to_id(self, token):
    return self.tok.token_to_id(token)

  def encode(self, text, add_special_tokens=False):
    """``add_special_tokens`` applies the tokenizer's post-processor (e.g. Llama-3's BOS)."""
    return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids, skip_special_tokens=True):
    return self.tok.decode(self._check_ids(ids), skip_special_tokens=skip_special_tokens)

  def token_bytes(self, i):
    t = self.tok.id_to_token(i)
    if self._decoder_type != 'ByteLevel':
      raise NotImplementedError(
          f'byte table for a {self._decoder_type} decoder; only '
          'byte-level BPE (ByteLevel decoder) is supported'
      )
    # tokenizers' ByteLevel decoder: map every char back to its byte; a token with a char
    # outside the alphabet (an added token such as one with a space) is taken as UTF-8.
    try:
      return bytes(self._b2u_inv[c] for c in t)
    except KeyError:
      return t.encode('utf-8')


def _read_gguf_metadata(path: str) -> dict:
  try:
    from compfn.model.gguf import read_metadata
  except ImportError:  # compfn.model.gguf not there yet: the gguf package, if installed
    try:
      from gguf import GGUFReader
    except ImportError:
      raise ImportError('reading GGUF metadata needs compfn.model.gguf') from None
    r = GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith('GGUF.')}
  return read_metadata(path)


# llama.cpp pre-tokenizer names -> split regex, as transformers' GGUF loader uses them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r'| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+'
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r'| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+'
)
_GGUF_SPLITS = {
    'llama3': _LLAMA3_SPLIT,
    'llama-v3': _LLAMA3_SPLIT,
    'llama-bpe': _LLAMA3_SPLIT,
    'smaug-bpe': _LLAMA3_SPLIT,
    'qwen2': _QWEN2_SPLIT,
    'deepseek-r1-qwen': _QWEN2_SPLIT,
}


def tokenizer_from_gguf(path: PathLike) -> HFTokenizer:
  """Rebuild a byte-level BPE tokenizer (``tokenizer.ggml.model == 'gpt2'``, e.g. SmolLM2)
  from GGUF metadata, as transformers 5.24's GGUF loader builds it:
  BPE(vocab, merges) with GPT-2's ByteLevel pre-tokenizer (or the split regex of
  ``tokenizer.ggml.pre`` for llama3/qwen2 vocabularies) and decoder; CONTROL tokens (type 3)
  become special added tokens, USER_DEFINED ones (type 4) plain added tokens; bos/eos/pad/unk
  from their ids; ``tokenizer.chat_template``."""
  from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
  from tokenizers import Tokenizer as _Tok

  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no GGUF file at {path}')
  md = _read_gguf_metadata(path)
  kind = md.get('tokenizer.ggml.model')
  if kind != 'gpt2':
    raise NotImplementedError(
        f'GGUF tokenizer.ggml.model={kind!r}: only byte-level BPE '
        "('gpt2') is rebuilt; load the checkpoint's tokenizer.json or "
        'tokenizer.model instead'
    )
  tokens = [str(t) for t in md['tokenizer.ggml.tokens']]
  types = [int(t) for t in md.get('tokenizer.ggml.token_type', [1] * len(tokens))]
  alphabet = set(bytes_to_unicode().values())
  b2u = bytes_to_unicode()
  vocab = {}
  for i, t in enumerate(tokens):
    key = t if set(t) <= alphabet else ''.join(b2u[b] for b in t.encode('utf-8'))
    vocab[key] = i
  merges = [tuple(m.split(' ')) for m in md['tokenizer.ggml.merges']]
  tok = _Tok(
      models.BPE(
          vocab=vocab,
          merges=merges,
          dropout=None,
          continuing_subword_prefix='',
          end_of_word_suffix='',
          fuse_unk=False,
      )
  )
  split = _GGUF_SPLITS.get(md.get('tokenizer.ggml.pre'))
  if split is None:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(
        add_prefix_space=False, trim_offsets=True, use_regex=True
    )
  else:
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior='isolated'),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
  tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
  tid = lambda k: md.get(f'tokenizer.ggml.{k}')  # noqa: E731
  add_bos = bool(md.get('tokenizer.ggml.add_bos_token', False))
  bos = tid('bos_token_id')
  if add_bos and bos is not None:
    tok.post_processor = processors.TemplateProcessing(
        single=f'{tokens[bos]}:0 $A:0',
        pair=f'{tokens[bos]}:0 $A:0 {tokens[bos]}:0 $B:1',
        special_tokens=[(tokens[bos], bos)],
    )
  else:
    tok.post_processor = processors.TemplateProcessing(
        single='$A:0', pair='$A:0 $B:1', special_tokens=[]
    )
  control = [
      AddedToken(t, normalized=False, special=True)
      for t, ty in zip(tokens, types)
      if ty == 3 and set(t) <= alphabet
  ]
  if control:
    tok.add_special_tokens(control)
  user = [
      AddedToken(t, normalized=False, special=False)
      for t, ty in zip(tokens, types)
      if ty == 4 and t in vocab
  ]
  if user:
    tok.add_tokens(user)
  config = {'chat_template': md.get('tokenizer.chat_template'), 'add_bos_token': add_bos}
  for name, key in (
      ('bos', 'bos_token_id'),
      ('eos', 'eos_token_id'),
      ('unk', 'unknown_token_id'),
      ('pad', 'padding_token_id'),
  ):
    i = tid(key)
    config[f'{name}_token'] = None if i is None else tokens[int(i)]
  return HFTokenizer(tok, config)


# --------------------------------------------------------------------------------------------
# Char-level (spec/MINIATURE.md)
# --------------------------------------------------------------------------------------------

# The characters of the compact/trace formats: space and ' ( ) , - ; = _ |, digits, letters,
# « ». (MINIATURE.md says "75 characters"; its own list has these 74.)
TRACE_CHARS = (
    " '(),-;=_|" + '0123456789' + 'ABCDEFGHIJKLMNOPQRSTUVWXYZ' + 'abcdefghijklmnopqrstuvwxyz' + '«»'
)


class CharTokenizer(Tokenizer):
  """One id per character: PAD=0, EOS=1, then ``chars`` in order (deterministic). The strings
  '<pad>' and '<eos>' in the text encode to PAD/EOS; any other character outside ``chars``
  raises ValueError. No BOS; ``add_special_tokens=True`` appends EOS."""

  PAD, EOS = '<pad>', '<eos>'

  def __init__(self, chars: str = TRACE_CHARS):
    if len(set(chars)) != len(chars):
      raise ValueError('CharTokenizer: duplicate characters')
    self.chars = chars
    self.pad_id, self.eos_id, self.bos_id = 0, 1, None
    self.pad_token, self.eos_token = self.PAD, self.EOS
    self._id = {c: i + 2 for i, c in enumerate(chars)}
    self.vocab_size = len(chars) + 2
    self.special_ids = frozenset((0, 1))
    self.stop_ids = (1,)
    self._re = re.compile('<pad>|<eos>|.', re.S)

  def token_to_id(self, token):
    return {self.PAD: 0, self.EOS: 1}.get(token, self._id.get(token))

  def encode(self, text, add_special_tokens=False):
    ids = []
    for m in self._re.finditer(text):
      i = self.token_to_id(m.group())
      if i is None:
        raise ValueError(
            f'CharTokenizer: character {m.group()!r} at {m.start()} is not ' 'in the vocabulary'
        )
      ids.append(i)
    return ids + [self.eos_id] if add_special_tokens else ids

  def decode(self, ids, skip_special_tokens=True):
    ids = self._check_ids(ids)
    names = {0: self.PAD, 1: self.EOS}
    return ''.join(
        ('' if skip_special_tokens else names[i]) if i < 2 else self.chars[i - 2] for i in ids
    )

  def token_bytes(self, i):
    return b'' if i < 2 else self.chars[i - 2].encode('utf-8')


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_tokenizer(path: PathLike, **kwargs) -> Tokenizer:
  """A tokenizer from a checkpoint directory (tokenizer.json, else tokenizer.model), a
  tokenizer.json, a SentencePiece .model or a .gguf file. ``'char'`` -> CharTokenizer.
  A SentencePiece model takes ``special_tokens`` and ``chat_template`` from kwargs, or from a
  tokenizer_config.json beside it (additional_special_tokens, chat_template)."""
  path = os.fspath(path)
  if path == 'char':
    return CharTokenizer(**kwargs)
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, 'tokenizer.json')):
      return HFTokenizer.from_file(path)
    if os.path.isfile(os.path.join(path, 'tokenizer.model')):
      return _load_sp(os.path.join(path, 'tokenizer.model'), **kwargs)
    raise FileNotFoundError(f'no tokenizer.json or tokenizer.model in {path}')
  if not os.path.exists(path):
    raise FileNotFoundError(f'no tokenizer at {path}')
  if path.endswith('.json'):
    return HFTokenizer.from_file(path)
  if path.endswith('.gguf'):
    return tokenizer_from_gguf(path)
  if path.endswith('.model'):
    return _load_sp(path, **kwargs)
  raise ValueError(
      f'unknown tokenizer file type: {path} (expected a directory, '
      'tokenizer.json, a SentencePiece .model or a .gguf)'
  )


def _load_sp(path, special_tokens=None, chat_template=None):
  cfg_path = os.path.join(os.path.dirname(path), 'tokenizer_config.json')
  cfg = {}
  if os.path.isfile(cfg_path):
    with open(cfg_path, encoding='utf-8') as f:
      cfg = json.load(f)
  if special_tokens is None:
    special_tokens = [_token_str(t) for t in cfg.get('additional_special_tokens', [])]
  if chat_template is None:
    chat_template = cfg.get('chat_template')
  sp = SentencePieceTokenizer(path, chat_template=chat_template)
  special_tokens = [t for t in special_tokens if sp.token_to_id(t) is not None]
  if special_tokens:
    sp = SentencePieceTokenizer(sp.model_proto, special_tokens, chat_template)
  return sp


# --------------------------------------------------------------------------------------------
# Token -> bytes table, host and device detokenisation
# --------------------------------------------------------------------------------------------


def byte_table(tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """``(table uint8[V, P], lengths int32[V])``: row i holds token i's bytes (P = the longest
  piece, at least 1); special tokens have length 0. SentencePiece '▁' is a space and byte
  pieces ``<0xNN>`` their byte; byte-level BPE pieces go through GPT-2's inverse byte map.
  See the module docstring for the first-piece rule (``first_skip``)."""
  V = tokenizer.vocab_size
  pieces = [b'' if i in tokenizer.special_ids else tokenizer.token_bytes(i) for i in range(V)]
  lengths = np.fromiter((len(p) for p in pieces), np.int32, V)
  P = max(1, int(lengths.max(initial=0)))
  flat = np.frombuffer(b''.join(p.ljust(P, b'\0') for p in pieces), np.uint8)
  return flat.reshape(V, P).copy(), lengths


def first_skip(tokenizer: Tokenizer) -> np.ndarray:
  """int32[V]: bytes dropped from a token when it is the sequence's first non-empty piece
  (1 for SentencePiece '▁'-initial pieces of a dummy-prefix model, else 0)."""
  return np.fromiter(
      (
          0 if i in tokenizer.special_ids else tokenizer.token_first_skip(i)
          for i in range(tokenizer.vocab_size)
      ),
      np.int32,
      tokenizer.vocab_size,
  )


def detokenize_bytes(tokenizer: Tokenizer, ids: Iterable[int]) -> bytes:
  """Host reference: ``tokenizer.detokenize_bytes(ids)``."""
  return tokenizer.detokenize_bytes(ids)


def jax_detokenize(table, lengths, ids, mask, first_skip=None, max_bytes: Optional[int] = None):
  """Detokenise a batch on device (jittable; ``max_bytes`` static).

  table uint8/int32[V, P], lengths int32[V], ids int32[B, T], mask bool[B, T] (False =
  padding / not part of the response), first_skip int32[V] or None.
  Returns ``(bytes int32[B, N], n int32[B])`` with N = max_bytes or T * P: row b's bytes are
  ``bytes[b, :n[b]]``, zeros after. ``n`` is the full length even when it exceeds N (overflow:
  check ``n > N``; the bytes past N are not written).

  Token t of a row starts at ``cumsum(len)[t] - len[t]``; its bytes ``table[id, skip + k]``
  (k < len - skip) go to ``start + k`` in one scatter.
  """
  import jax.numpy as jnp

  V, P = table.shape
  B, T = ids.shape
  N = T * P if max_bytes is None else int(max_bytes)
  ids = jnp.clip(ids.astype(jnp.int32), 0, V - 1)
  L = jnp.where(mask, jnp.asarray(lengths, jnp.int32)[ids], 0)
  if first_skip is not None:
    nonempty = L > 0
    first = nonempty & (jnp.cumsum(nonempty.astype(jnp.int32), axis=1) == 1)
    skip = jnp.where(first, jnp.asarray(first_skip, jnp.int32)[ids], 0)
  else:
    skip = jnp.zeros_like(L)
  L = L - skip
  end = jnp.cumsum(L, axis=1)
  start = end - L
  k = jnp.arange(P, dtype=jnp.int32)
  src = jnp.asarray(table)[ids[..., None], jnp.minimum(skip[..., None] + k, P - 1)]
  pos = start[..., None] + k
  pos = jnp.where((k < L[..., None]) & (pos < N), pos, N)  # N = dropped
  rows = jnp.broadcast_to(jnp.arange(B, dtype=jnp.int32)[:, None, None], pos.shape)
  out = jnp.zeros((B, N), jnp.int32).at[rows, pos].set(src.astype(jnp.int32), mode='drop')
  return out, end[:, -1]
