"""tools/convert_checkpoint.py: the shipped SmolLM2 GGUF becomes an HF folder that transformers
serves with the same logits and the same tokenizer/chat template."""

import importlib.util
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool():
  spec = importlib.util.spec_from_file_location('convert', ROOT / 'tools' / 'convert_checkpoint.py')
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_smollm2_gguf_to_hf_folder(tmp_path):
  from compfn.model.gguf import smollm2_gguf_path

  try:
    smollm2_gguf_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from compfn import model

  out = tmp_path / 'smol'
  assert _tool().main(['--smollm2', '--output', str(out)]) == 0
  tok = transformers.AutoTokenizer.from_pretrained(out)
  msgs = [{'role': 'user', 'content': 'What is func_3(x) for x = "abc"?'}]
  text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  from compfn.tokenizers import load_tokenizer

  ours = load_tokenizer(str(out))
  assert ours.apply_chat_template(msgs, add_generation_prompt=True) == text
  ids = tok(text, add_special_tokens=False)['input_ids']
  assert ours.encode(text) == ids
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  with torch.no_grad():
    want = hf(torch.tensor([ids])).logits.numpy()
  config, params = model.load(str(out))
  got = np.asarray(model.logits(config, params, np.array([ids], np.int32)))
  assert np.max(np.abs(got - want)) < 1e-3
  assert (got.argmax(-1) == want.argmax(-1)).all()


def test_missing_input_is_a_clear_error(tmp_path, capsys):
  with pytest.raises(SystemExit):
    _tool().main(['--input', str(tmp_path / 'nope.gguf'), '--output', str(tmp_path / 'o')])
  assert 'no such file' in capsys.readouterr().err


def test_hf_folder_input_keeps_its_tokenizer(tmp_path):
  """An HF folder's tokenizer and generation config are copied next to the converted weights
  (compfn's load_model needs tokenizer.json or tokenizer.model there)."""
  import jax
  from compfn import model

  config = model.tiny('llama')
  params = model.init_params(config, jax.random.PRNGKey(0))
  src = tmp_path / 'hf'
  model.save_hf_folder(str(src), config, params)
  (src / 'tokenizer.json').write_text('{"version": "1.0", "model": {}}')
  (src / 'generation_config.json').write_text('{"temperature": 0.6}')
  out = tmp_path / 'out'
  assert _tool().main(['--input', str(src), '--output', str(out), '--dtype', 'float32']) == 0
  for f in ('tokenizer.json', 'generation_config.json'):
    assert (out / f).read_bytes() == (src / f).read_bytes()
  assert not (out / 'tokenizer_config.json').exists()
