"""compfn.rl.rollout: sample -> detokenise -> score in one jitted program; rewards equal the
Python reference scorers on the decoded texts (rewards 1, 0 and -1 all occur, via a "bigram"
model whose next token is a fixed function of the current one), no host callbacks, sharding."""

import jax
import numpy as np
import pytest

from compfn import model
from compfn import sampling
from compfn import tokenizers
from compfn.rl import advantages
from compfn.rl import rollout
from compfn.tasks.strings import scoring


class ByteTok(tokenizers.Tokenizer):
  """Bytes 0..255, EOS 256 (special), and three multi-byte pieces (a byte table with P > 1)."""

  EXTRA = (b'{"output": "', b'"}', b'Answer: {"output": "')

  def __init__(self):
    self.vocab_size = 257 + len(self.EXTRA)
    self.eos_id, self.pad_id = 256, 0
    self.special_ids = frozenset({256})
    self.stop_ids = (256,)

  def token_to_id(self, token):
    return None

  def token_bytes(self, i):
    return bytes([i]) if i < 256 else (b"" if i == 256 else self.EXTRA[i - 257])

  def encode(self, text, add_special_tokens=False):
    return list(text.encode("utf-8"))

  def decode(self, ids, skip_special_tokens=True):
    return self.detokenize_bytes(ids).decode("utf-8", errors="replace")


def _bigram(tok, chain, num_kv_heads=2):
  """A transformer whose greedy next token is ``chain[current token]``: attention and MLP
  outputs are zero, embeddings are one-hot and the LM head maps each token to its successor."""
  v = tok.vocab_size
  d = 1 << (v - 1).bit_length()
  config = model.tiny("llama", vocab_size=v, d_model=d, num_kv_heads=num_kv_heads)
  p = jax.tree.map(np.array, model.init_params(config, jax.random.key(0)))
  p["layers"]["attn"]["wo"][:] = 0
  p["layers"]["mlp"]["wo"][:] = 0
  p["final_norm"]["scale"][:] = 1
  p["token_embed"] = np.eye(v, d, dtype=np.float32)
  head = np.zeros((d, v), np.float32)
  for a, b in chain.items():
    head[a, b] = 10.0
  p["lm_head"] = head
  return config, p


def _reference(tok, out, refs, g, fn):
  out = jax.tree.map(np.asarray, out)
  texts = [tok.decode(out.tokens[i, : out.lengths[i]].tolist()) for i in range(len(out.score))]
  ref = [fn(t, refs[i // g], bool(out.truncated[i])) for i, t in enumerate(texts)]
  return texts, np.array([r[0] for r in ref]), np.array([r[1] for r in ref])


@pytest.fixture(scope="module")
def trace_setup():
  tok = tokenizers.CharTokenizer()
  t = tok.token_to_id
  chain = {
      "x": ";",
      ";": "a",
      "a": "b",
      "b": "<eos>",
      "y": "c",
      "c": "d",
      "d": "<eos>",
      "w": "w",
      "z": ";",
  }
  chain = {t(k): t(v) for k, v in chain.items()}
  prompts = ["qx", "y", "qqz", "w"]  # -> ";ab" (1), "cd" (-1: no ';'), ";ab" vs "zz" (0),
  refs = ["ab", "ab", "zz", "ab"]  #    "wwww..." (-1: truncated)
  batch = rollout.RolloutBatch.from_host([tok.encode(s) for s in prompts], refs)
  return tok, chain, batch, refs


def test_rollout_trace_rewards_equal_reference_scorer(trace_setup):
  tok, chain, batch, refs = trace_setup
  config, params = _bigram(tok, chain)
  detok = rollout.DetokTables.from_tokenizer(tok)
  cfg = sampling.SamplerConfig(8, temperature=0.0, stop_ids=tok.stop_ids, num_samples=2)
  out = rollout.rollout(config, params, batch, jax.random.key(0), cfg, "strings_trace", detok=detok)
  texts, score, acc = _reference(tok, out, refs, 2, scoring.score_trace)
  assert texts[::2] == [";ab", "cd", ";ab", "wwwwwwww"]
  np.testing.assert_array_equal(np.asarray(out.score), score)
  np.testing.assert_array_equal(np.asarray(out.acc), acc)
  np.testing.assert_array_equal(np.asarray(out.score), [1, 1, -1, -1, 0, 0, -1, -1])
  np.testing.assert_array_equal(np.asarray(out.reward), score.astype(np.float32))
  np.testing.assert_array_equal(np.asarray(out.truncated), [0, 0, 0, 0, 0, 0, 1, 1])
  np.testing.assert_array_equal(np.asarray(out.group), np.repeat(np.arange(4), 2))
  np.testing.assert_allclose(
      np.asarray(out.advantage), np.asarray(advantages.group_advantages(out.reward, 2))
  )
  for i, t in enumerate(texts):
    n = int(out.response_len[i])
    assert bytes(np.asarray(out.response_bytes[i, :n]).astype(np.uint8)) == t.encode()
  assert not np.asarray(out.byte_overflow).any()
  # A byte buffer too small for ";ab": never scored on a cut text -> -1 and flagged.
  small = rollout.rollout(
      config, params, batch, jax.random.key(0), cfg, "strings_trace", detok=detok, max_bytes=2
  )
  np.testing.assert_array_equal(np.asarray(small.byte_overflow), [1, 1, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(np.asarray(small.score), [-1, -1, -1, -1, -1, -1, -1, -1])


def test_rollout_json_one_program_no_host_callback_and_reference_rewards():
  tok = ByteTok()
  b = lambda s: s.encode()[0]  # noqa: E731
  open_a, close, open_b = 257, 258, 259
  chain = {
      b("x"): open_a,
      open_a: b("a"),
      b("a"): b("b"),
      b("b"): close,
      close: 256,
      b("y"): open_b,
      open_b: b("c"),
      b("c"): b("d"),
      b("d"): close,
      b("z"): b("q"),
      b("q"): b("r"),
      b("r"): 256,
      b("w"): b("w"),
  }
  config, params = _bigram(tok, chain)
  refs = ["ab", "ab", "ab", "ab"]
  batch = rollout.RolloutBatch.from_host([tok.encode(s) for s in ["x", "hey", "z", "w"]], refs)
  detok = rollout.DetokTables.from_tokenizer(tok)
  assert detok.table.shape[1] > 1
  cfg = sampling.SamplerConfig(12, temperature=0.0, stop_ids=tok.stop_ids, num_samples=1)

  args = (config, params, batch, jax.random.key(0), cfg, "strings_json", detok)
  lowered = rollout._rollout_jit.lower(*args)
  text = lowered.as_text()
  for bad in ("callback", "host_compute", "infeed", "outfeed"):
    assert bad not in text.lower(), bad
  jaxpr = str(
      jax.make_jaxpr(
          lambda p: rollout.rollout_fn(
              config, p, batch, jax.random.key(0), cfg, "strings_json", detok=detok
          )
      )(params)
  )
  assert "callback" not in jaxpr
  out = lowered.compile()(params, batch, jax.random.key(0), detok)

  texts, score, acc = _reference(tok, out, refs, 1, scoring.score)
  assert texts == ['{"output": "ab"}', 'Answer: {"output": "cd"}', "qr", "w" * 12]
  np.testing.assert_array_equal(np.asarray(out.score), [1, 0, -1, -1])
  np.testing.assert_array_equal(np.asarray(out.score), score)
  np.testing.assert_array_equal(np.asarray(out.acc), acc)
  np.testing.assert_array_equal(np.asarray(out.truncated), [0, 0, 0, 1])
  assert np.asarray(out.response_len).tolist() == [len(t.encode()) for t in texts]


def test_sharded_rollout_equals_unsharded(trace_setup):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  tok, chain, batch, refs = trace_setup
  config, params = _bigram(tok, chain, num_kv_heads=4)
  detok = rollout.DetokTables.from_tokenizer(tok)
  cfg = sampling.SamplerConfig(8, temperature=1.0, stop_ids=tok.stop_ids, num_samples=2)
  ref = rollout.rollout(config, params, batch, jax.random.key(4), cfg, "strings_trace", detok=detok)
  mesh = rollout.make_mesh((2, 1, 4))
  out = rollout.rollout(
      config,
      rollout.shard_params(config, params, mesh),
      rollout.shard_batch(batch, mesh),
      jax.random.key(4),
      cfg,
      "strings_trace",
      detok=detok,
      mesh=mesh,
  )
  for name in ("tokens", "logprobs", "score", "acc", "truncated", "response_len"):
    np.testing.assert_allclose(
        np.asarray(getattr(out, name)), np.asarray(getattr(ref, name)), atol=1e-5, err_msg=name
    )
  with pytest.raises(ValueError):
    rollout.rollout(config, params, batch, jax.random.key(4), cfg, "nope", detok=detok)
