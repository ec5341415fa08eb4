"""compfn-train: gin files parse, the dataset job runs, typos give gin's error naming them."""

import json
import pathlib

import pytest

from compfn import pipeline  # noqa: F401  (registers the pipeline's configurables)
from compfn import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_dataset_job_runs_from_gin(tmp_path):
  rc = main.main(
      [
          f'--gin_file={ROOT / "gin/data/paper_datasets.gin"}',
          "--gin_param=build_datasets.configs=['stage2_test_L1to8']",
          '--gin_param=build_datasets.progress=False',
          f'--workdir={tmp_path}',
      ]
  )
  assert rc == 0
  summary = json.loads((tmp_path / 'datasets.json').read_text())
  s = summary['stage2_test_L1to8']
  assert s['num'] == 2048 and s['stats']['levels']['8']['output_len_max'] == 2676
  rows = (tmp_path / 'jsonl' / 'stage2_test_L1to8.jsonl').read_text().splitlines()
  assert len(rows) == 2048 and json.loads(rows[0])['code'].startswith('def main_solution(x):')
  assert 'build_datasets.configs' in (tmp_path / 'config.gin').read_text()


def test_gin_typo_is_named(tmp_path):
  import gin

  gin.clear_config()
  with pytest.raises(ValueError, match='confgs'):
    main.main(
        [
            f'--gin_file={ROOT / "gin/data/paper_datasets.gin"}',
            '--gin_param=build_datasets.confgs=[]',
            f'--workdir={tmp_path}',
        ]
    )
  gin.clear_config()


def test_missing_gin_file_is_a_clear_error(tmp_path, capsys):
  with pytest.raises(SystemExit):
    main.main(['--gin_file=nope.gin', f'--workdir={tmp_path}'])
  assert 'nope.gin: no such file' in capsys.readouterr().err


@pytest.mark.parametrize(
    'path', sorted(str(p.relative_to(ROOT)) for p in ROOT.glob('gin/**/*.gin'))
)
def test_every_gin_file_parses_and_opens_with_how_to_run(path):
  import gin

  text = (ROOT / path).read_text()
  assert text.startswith('#') and 'Run:' in text and 'Runtime:' in text and 'Result:' in text
  gin.clear_config()
  gin.parse_config_file(str(ROOT / path))
  gin.clear_config()
