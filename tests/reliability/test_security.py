"""Security: no pickle/eval/yaml.load of user data anywhere; paths escaping the dataset are refused.

Zip entries and CSV paths that leave MURA-v1.1/ ('../', absolute) are tested on the builder:
tests/test_mura_builder.py::test_bad_zip_gives_one_error_and_no_dataset ('escaping entry',
'absolute entry') and ::test_bad_input_gives_one_error_and_no_dataset ('path escapes',
'absolute path'). That no environment credential reaches flags.json, result or prediction files
is checked on real run output in test_kill_resume.py.
"""
import ast
import os

import pytest

pytestmark = pytest.mark.reliability

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ('simclr_mura', 'tfds_mura', 'benchmarks')
# Calls that execute or unpickle their input. np.load unpickles only with allow_pickle=True (its
# default is False since NumPy 1.16.3).
FORBIDDEN_CALLS = {('pickle', 'load'), ('pickle', 'loads'), ('cPickle', 'load'), ('yaml', 'load'),
                   ('yaml', 'unsafe_load'), ('marshal', 'loads'), ('shelve', 'open'), ('dill', 'load'),
                   ('joblib', 'load')}
NUMPY_LOADS = {('np', 'load'), ('numpy', 'load')}
FORBIDDEN_NAMES = {'eval', 'exec', '__import__'}


def _sources():
    for package in PACKAGES + ('run.py',):
        root = os.path.join(REPO, package)
        if package.endswith('.py'):
            yield root
            continue
        for folder, _, files in os.walk(root):
            yield from (os.path.join(folder, f) for f in files if f.endswith('.py'))


def _problems(path):
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_NAMES:
            found.append(f'{func.id}()')
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            call = (func.value.id, func.attr)
            pickles = any(k.arg == 'allow_pickle' and getattr(k.value, 'value', True) is not False
                          for k in node.keywords)
            if call in FORBIDDEN_CALLS or (call in NUMPY_LOADS and pickles):
                found.append(f'{func.value.id}.{func.attr}()')
    return [f'{os.path.relpath(path, REPO)}:{p}' for p in found]


def test_no_code_executes_or_unpickles_its_input():
    problems = [p for path in _sources() for p in _problems(path)]
    assert not problems, problems


def test_the_checker_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('import pickle, yaml\nimport numpy as np\npickle.loads(b"")\nyaml.load("")\neval("1")\n'
                   'np.load("x.npz", allow_pickle=True)\nnp.load("y.npz")\n')
    assert [p.split(':')[-1] for p in _problems(str(bad))] == ['pickle.loads()', 'yaml.load()', 'eval()',
                                                              'np.load()']
