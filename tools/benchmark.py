#!/usr/bin/env python
"""Throughput benchmarks. Each compares compfn with a peer measured in the same run, writes JSON
and says what machine it ran on.

    python tools/benchmark.py verifier [--batch 1024] [--repeats 5] [--out bench/verifier.json]

verifier: programs/s of the JAX interpreter vs the Python reference (compfn's `program.run`, the
same work as the paper's eval'd lambdas) on the paper's level 1–8 test programs, and responses/s
of the on-device scorer vs the Python reference scorer (the paper's rule) on synthetic responses
built as in spec/BASELINES.md §4. Device figures are steady state (compiled, inputs on device,
`block_until_ready`); the end-to-end host wrappers (parse, encode, pad, transfer) are reported too.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import random
import statistics
import sys
import time

import numpy as np


def machine_info() -> dict:
    import jax
    cpu = ''
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {'cpu': cpu or platform.processor(), 'cores': os.cpu_count(),
            'python': platform.python_version(), 'jax': jax.__version__,
            'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
            'platform': platform.platform(), 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}


def timeit(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------------
# verifier
# ------------------------------------------------------------------------------------------------

_WORDS = ('the function then we apply result string so next call value output trace step first '
          'second input character returns gives').split()


def synthetic_responses(problems, seed=0):
    """Responses as in BASELINES.md §4: an opener, 200–600 chars of filler (30% of sentences
    mention the program's functions), then 50% correct JSON, 40% a one-character-perturbed
    answer, 10% no JSON; 30% of JSON endings inside a ```json fence."""
    rng = random.Random(seed)
    out = []
    for p in problems:
        text = f"Let's trace main_solution(\"{p.input}\") step by step. "
        target = rng.randint(200, 600)
        while len(text) < target:
            if rng.random() < 0.3 and p.functions:
                text += f'Applying {rng.choice(p.functions)} gives "{p.output[:8]}". '
            else:
                text += ' '.join(rng.choices(_WORDS, k=rng.randint(4, 10))) + '. '
        r = rng.random()
        if r < 0.9:
            ans = p.output
            if r >= 0.5:
                i = rng.randrange(len(ans) + 1)
                ans = ans[:i] + rng.choice('xyz') + ans[i + 1:]
            js = json.dumps({'output': ans}, ensure_ascii=False)
            text += f'\n```json\n{js}\n```' if rng.random() < 0.3 else f'\nSo the answer is {js}'
        else:
            text += '\nI am not sure.'
        out.append(text)
    return out


def bench_verifier(batch: int, repeats: int) -> dict:
    import jax
    from compfn.tasks.strings import generate, program as P, scoring
    from compfn.tasks.strings import device_scoring, interpreter

    test = generate(2, 'test', 1, 8, 2048)
    per_level = batch // 8
    probs = [p for lv in range(1, 9) for p in [q for q in test if q.level == lv][:per_level]]
    codes = [p.code for p in probs]
    inputs = [p.input for p in probs]
    refs = [p.output for p in probs]
    res: dict = {'batch': len(probs)}

    # Programs: Python reference.
    nodes = [P.parse_code(c) for c in codes]
    t_parse_run = timeit(lambda: [P.run(P.parse_code(c), x) for c, x in zip(codes, inputs)],
                         repeats)
    t_run = timeit(lambda: [P.run(n, x) for n, x in zip(nodes, inputs)], repeats)
    # Programs: device, end to end (parse + encode + run + decode) and steady state.
    outs = interpreter.execute_batch(codes, inputs, capacity=4096)
    assert outs == refs, 'device interpreter disagrees with the reference'
    t_e2e = timeit(lambda: interpreter.execute_batch(codes, inputs, capacity=4096), repeats)
    steady = interpreter.benchmark_fn(codes, inputs, capacity=4096)
    t_dev = timeit(steady, repeats)
    res['programs'] = {
        'python_parse_and_run_per_s': len(probs) / t_parse_run,
        'python_run_only_per_s': len(probs) / t_run,
        'device_steady_per_s': len(probs) / t_dev,
        'device_end_to_end_per_s': len(probs) / t_e2e,
        'ratio_device_steady_vs_python_run': t_run / t_dev,
        'ratio_device_end_to_end_vs_python_parse_and_run': t_parse_run / t_e2e,
    }

    # Responses.
    responses = synthetic_responses(probs)
    want = [scoring.score(r, ref) for r, ref in zip(responses, refs)]
    t_py = timeit(lambda: [scoring.score(r, ref) for r, ref in zip(responses, refs)], repeats)
    s, a = device_scoring.score_batch(responses, refs)
    assert [tuple(map(int, x)) for x in zip(s, a)] == want, 'device scorer disagrees'
    t_e2e_s = timeit(lambda: device_scoring.score_batch(responses, refs), repeats)
    steady_s = device_scoring.benchmark_fn(responses, refs)
    t_dev_s = timeit(steady_s, repeats)
    res['responses'] = {
        'mean_chars': statistics.mean(len(r) for r in responses),
        'score_counts': {k: sum(w[0] == k for w in want) for k in (1, 0, -1)},
        'python_reference_per_s': len(probs) / t_py,
        'device_steady_per_s': len(probs) / t_dev_s,
        'device_end_to_end_per_s': len(probs) / t_e2e_s,
        'ratio_device_steady_vs_python': t_py / t_dev_s,
        'ratio_device_end_to_end_vs_python': t_py / t_e2e_s,
    }
    del jax
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='what', required=True)
    v = sub.add_parser('verifier', help='on-device verifier vs the Python reference')
    v.add_argument('--batch', type=int, default=1024)
    v.add_argument('--repeats', type=int, default=5)
    v.add_argument('--out', default='bench/verifier.json')
    args = ap.parse_args(argv)
    if args.what == 'verifier':
        if args.batch % 8 or not 8 <= args.batch <= 2048:
            ap.error('--batch must be a multiple of 8 between 8 and 2048')
        result = {'benchmark': 'verifier', 'machine': machine_info(),
                  'result': bench_verifier(args.batch, args.repeats)}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    json.dump(result['result'], sys.stdout, indent=1)
    print(f'\nwrote {out}')


if __name__ == '__main__':
    main()
