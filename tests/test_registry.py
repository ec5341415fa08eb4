"""The task registry maps names to generators and scorers that agree with each other."""

import pytest

from compfn.tasks import registry


def test_registered_tasks_score_their_own_references():
  assert {'strings/paper', 'strings/trace', 'countdown'} <= set(registry.names())
  paper = registry.get('strings/paper')
  for p in paper.generate(stage=2, split='test', min_level=1, max_level=2, num=8):
    ref = paper.reference(p)
    assert paper.score('so {"output": "%s"}' % ref, ref) == (1, 1)
    assert paper.score('so {"output": "%s!"}' % ref, ref) == (0, 0)
    assert paper.prompt(p).startswith('You are given a code:')
  trace = registry.get('strings/trace')
  for p in trace.generate(['sort_chars', 'mirror_str'], 1, 2, 4):
    assert trace.score(p.target, trace.reference(p)) == (1, 1)


def test_unknown_task_and_duplicate_registration():
  with pytest.raises(KeyError, match="unknown task 'nope'"):
    registry.get('nope')
  with pytest.raises(ValueError, match='already registered'):
    registry.register(registry.get('strings/paper'))
