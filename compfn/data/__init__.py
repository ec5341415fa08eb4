"""Datasets: TFDS builders written as array_record (no TensorFlow), grain pipelines, JSONL.

Re-exports (imported lazily, so ``import compfn.data`` stays cheap):

* from :mod:`compfn.data.strings_tfds`: ``StringTask``, ``StringTrace``, ``config_from_name``,
  ``named_configs``, ``prepare``, ``default_data_dir``, ``decode_record``, ``generate_records``;
* from :mod:`compfn.data.pipeline`: ``string_source``, ``make_dataset``, ``collate``,
  ``write_jsonl``, ``read_jsonl``, ``iter_jsonl``.

CLI: ``compfn-data`` (:mod:`compfn.data.build`).
"""

import importlib

_EXPORTS = {
    'StringTask': 'strings_tfds',
    'StringTrace': 'strings_tfds',
    'config_from_name': 'strings_tfds',
    'named_configs': 'strings_tfds',
    'prepare': 'strings_tfds',
    'default_data_dir': 'strings_tfds',
    'decode_record': 'strings_tfds',
    'generate_records': 'strings_tfds',
    'string_source': 'pipeline',
    'make_dataset': 'pipeline',
    'collate': 'pipeline',
    'write_jsonl': 'pipeline',
    'read_jsonl': 'pipeline',
    'iter_jsonl': 'pipeline',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    module = importlib.import_module(f'compfn.data.{_EXPORTS[name]}')
    return getattr(module, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
