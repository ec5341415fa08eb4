#!/usr/bin/env python
"""transformers ``generate`` peer for tools/benchmark_sampler.py (spec/BASELINES.md §1).

Runs in the torch environment (torch 2.13 CPU, transformers 5.24), one configuration per
process so peak RSS is per configuration. Usage (the benchmark writes the spec file)::

    python tools/peers/hf_generate.py SPEC.json

SPEC: {"model_dir", "prompt_ids": [P ints], "batch", "new_tokens", "repeats", "eos_id",
       "pad_id", "mode": "sample" | "greedy", "threads": 2}

Prints one line ``RESULT {json}``. ``sample`` mode is BASELINES §1 exactly: a Stamp logits
processor (called once per new token right after each forward pass) splits prefill from decode,
``min_new_tokens = new_tokens`` blocks EOS, T=1.0, top_k=0, top_p=1.0, 1 warm-up call (seed 0)
then ``repeats`` timed calls (seeds 1..), median. ``greedy`` mode returns the tokens of one
``do_sample=False`` call (EOS blocked the same way) for the token-equality check.
"""
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')


def main(spec):
  import torch
  import transformers
  from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

  torch.set_num_threads(int(spec.get('threads', 2)))
  t = time.perf_counter()
  model = AutoModelForCausalLM.from_pretrained(spec['model_dir'], dtype=torch.float32).eval()
  load_s = time.perf_counter() - t
  B, N = int(spec['batch']), int(spec['new_tokens'])
  ids = torch.tensor([spec['prompt_ids']], dtype=torch.long).repeat(B, 1)
  P = ids.shape[1]
  eos = int(spec['eos_id'])

  class Stamp(LogitsProcessor):

    def __init__(self):
      self.t = []

    def __call__(self, input_ids, scores):
      self.t.append(time.perf_counter())
      return scores

  def call(seed, greedy=False):
    torch.manual_seed(seed)
    s = Stamp()
    kw = (
        dict(do_sample=False)
        if greedy
        else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    )
    t0 = time.perf_counter()
    with torch.no_grad():
      out = model.generate(
          input_ids=ids,
          attention_mask=torch.ones_like(ids),
          max_new_tokens=N,
          min_new_tokens=N,
          eos_token_id=eos,
          pad_token_id=int(spec['pad_id']),
          logits_processor=LogitsProcessorList([s]),
          **kw,
      )
    t1 = time.perf_counter()
    new = out[:, P:]
    assert new.shape == (B, N) and len(s.t) == N, (new.shape, len(s.t))
    assert not (new == eos).any()
    return dict(prefill=s.t[0] - t0, decode=t1 - s.t[0], total=t1 - t0), new

  res = dict(
      system='transformers',
      attn_implementation=getattr(model.config, '_attn_implementation', None),
      torch=torch.__version__,
      transformers=transformers.__version__,
      threads=torch.get_num_threads(),
      batch=B,
      prompt_len=P,
      new_tokens=N,
      load_s=load_s,
  )
  if spec.get('mode') == 'greedy':
    _, new = call(0, greedy=True)
    res['tokens'] = new.tolist()
  else:
    warm, _ = call(0)
    runs = [call(seed)[0] for seed in range(1, int(spec['repeats']) + 1)]
    med = {k: statistics.median(r[k] for r in runs) for k in ('prefill', 'decode', 'total')}
    steps = N - 1  # forward passes inside the decode interval (the first is prefill's)
    res.update(
        prefill_s=med['prefill'],
        decode_s=med['decode'],
        total_s=med['total'],
        decode_forward_steps=steps,
        ms_per_step=1e3 * med['decode'] / steps,
        decode_tok_s=B * N / med['decode'],
        prefill_tok_s=B * P / med['prefill'],
        e2e_tok_s=B * N / med['total'],
        first_call_s=warm['total'],
        first_call_extra_s=warm['total'] - med['total'],
        compile_s=None,
        runs=runs,
    )
  res['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print('RESULT ' + json.dumps(res), flush=True)


if __name__ == '__main__':
  with open(sys.argv[1]) as f:
    main(json.load(f))
