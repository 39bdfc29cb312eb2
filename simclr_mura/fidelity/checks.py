"""Compare this port with numbers produced by the official SimCLR TF2 code.

Usage: python -m simclr_mura.fidelity FIXTURE_DIR

Checks every known fixture file in FIXTURE_DIR (contrastive_loss.npz, lars.npz,
lr_schedule.csv, train_steps.csv, augment_deterministic.npz, forward.npz,
ckpt_manifest_*.txt; formats in tests/fixtures/official/README.md). The configuration of
each check (cases, replica counts, variables, sizes, hyper-parameters) is read from the
file itself. Prints one row per compared array (name, max |diff|, tolerance, PASS/FAIL)
and finally `N passed, M failed`; exits 1 on any failure or unreadable file, 2 on bad usage.

Tolerances follow the fixture README: `|a - b| <= atol + rtol * |b|` element-wise; the
printed tolerance is `atol + rtol * max|b|`.
"""
import argparse
import csv
import glob
import math
import os
import re
import sys
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Only affects a not-yet-imported TF.

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from simclr_mura import data_util, objective, schedule  # noqa: E402
from simclr_mura.fidelity.compare import Row, compare  # noqa: E402
from simclr_mura.lars_optimizer import LARSOptimizer  # noqa: E402


def configure_logical_cpus(count: int) -> bool:
    """Splits the first CPU into `count` logical devices; False if TF is already initialised."""
    cpus = tf.config.list_physical_devices('CPU')
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
        return True
    except RuntimeError:
        return False


# ----------------------------------------------------------------------------- contrastive

_CONTRAST_TOL = dict(atol=1e-5, rtol=1e-5)


def _contrastive_rows(prefix: str, data, key_prefix: str, loss, logits_ab, labels) -> List[Row]:
    """Rows for one (loss, logits_ab, labels) triple against the keys `<key_prefix>_*` present."""
    acc = objective.contrastive_accuracy(labels, logits_ab)
    ent = objective.contrastive_entropy(logits_ab)
    values = {'loss': (loss, _CONTRAST_TOL), 'logits_ab': (logits_ab, _CONTRAST_TOL),
              'labels': (labels, {}), 'contrast_acc': (acc, {}),
              'contrast_entropy': (ent, _CONTRAST_TOL)}
    if f'{key_prefix}_loss' not in data:
        raise KeyError(f'{key_prefix}_loss')
    return [compare(f'{prefix} {suffix}', np.asarray(value), data[f'{key_prefix}_{suffix}'], **tol)
            for suffix, (value, tol) in values.items() if f'{key_prefix}_{suffix}' in data]


def _simulate_replicas(hiddens, hidden_norm, temperature):
    """Per-replica (loss, logits_ab, labels) computed from the exact global concatenation."""
    views = []
    for h in hiddens:
        h = tf.constant(h, tf.float32)
        if hidden_norm:
            h = tf.math.l2_normalize(h, -1)
        views.append(tf.split(h, 2, 0))
    h1_large = tf.concat([v[0] for v in views], 0)
    h2_large = tf.concat([v[1] for v in views], 0)
    return [objective.contrastive_logits_and_loss(h1, h2, h1_large, h2_large, r, temperature)
            for r, (h1, h2) in enumerate(views)]


_STRATEGIES: Dict[int, tf.distribute.Strategy] = {}
# Every MirroredStrategy numbers its collective ops from the class's key base (0), so two
# strategies on the same devices in one process reuse collective keys and fail with
# "Shape mismatch in the collective instance ..." once their collectives differ. The shared
# strategies below get their own key range (TensorFlow's own test harness does the same).
_COLLECTIVE_KEY_OFFSET = 1_000_000


def cpu_strategy(num_replicas: int) -> tf.distribute.MirroredStrategy:
    """A process-wide MirroredStrategy over the first `num_replicas` logical CPUs.

    Reuse it (tests, fidelity checks) instead of creating new strategies, which would
    collide on collective keys (see above).
    """
    if num_replicas not in _STRATEGIES:
        cls = tf.distribute.MirroredStrategy
        default_base = getattr(cls, '_collective_key_base', None)
        if default_base is not None:
            cls._collective_key_base = default_base + _COLLECTIVE_KEY_OFFSET * num_replicas
        try:
            _STRATEGIES[num_replicas] = cls([f'/cpu:{i}' for i in range(num_replicas)])
        finally:
            if default_base is not None:
                cls._collective_key_base = default_base
    return _STRATEGIES[num_replicas]


def _run_replicas(hiddens, hidden_norm, temperature):
    """Per-replica outputs and Keras Mean metric results from a real MirroredStrategy."""
    num = len(hiddens)
    strategy = cpu_strategy(num)
    with strategy.scope():
        metrics = [tf_keras.metrics.Mean() for _ in range(3)]
    values = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(hiddens[ctx.replica_id_in_sync_group], tf.float32))

    def replica_fn(hidden):
        loss, logits_ab, labels = objective.add_contrastive_loss(
            hidden, hidden_norm, temperature, strategy=strategy)
        metrics[0].update_state(loss)
        metrics[1].update_state(objective.contrastive_accuracy(labels, logits_ab))
        metrics[2].update_state(objective.contrastive_entropy(logits_ab))
        return loss, logits_ab, labels

    outputs = tf.function(lambda v: strategy.run(replica_fn, args=(v,)))(values)
    per_replica = [[strategy.experimental_local_results(o)[r] for o in outputs]
                   for r in range(num)]
    return per_replica, [m.result() for m in metrics]


def _replica_case_rows(base: str, data, key: str, simulate: Optional[bool]) -> List[Row]:
    """Rows of one multi-replica case: per-replica outputs and the cross-replica Mean metrics."""
    temperature = float(data[f'{key}_temperature'])
    hidden_norm = bool(data[f'{key}_hidden_norm'])
    num = int(data[f'{key}_num_replicas'])
    hiddens = [data[f'{key}_replica{r}_hidden'] for r in range(num)]
    enough = len(tf.config.list_logical_devices('CPU')) >= num
    use_strategy = enough if simulate is None else not simulate
    if use_strategy and not enough:
        raise RuntimeError(f'{key} needs {num} logical CPU devices; call '
                           'configure_logical_cpus before TensorFlow initialises.')
    if use_strategy:
        per_replica, metric_values = _run_replicas(hiddens, hidden_norm, temperature)
        mode = f'{num} replicas'
    else:
        per_replica = _simulate_replicas(hiddens, hidden_norm, temperature)
        # A Keras Mean updated once per replica is the mean of the replica values.
        metric_values = np.mean(
            [[ls, objective.contrastive_accuracy(lb, lg), objective.contrastive_entropy(lg)]
             for ls, lg, lb in per_replica], axis=0)
        mode = f'{num} replicas, simulated gather'
    rows = []
    for r, out in enumerate(per_replica):
        rows += _contrastive_rows(f'{base} {key} replica{r} ({mode})', data,
                                  f'{key}_replica{r}', *out)
    for name, value in zip(('loss', 'acc', 'entropy'), metric_values):
        metric_key = f'{key}_metric_contrast_{name}'
        if metric_key in data:
            tol = {} if name == 'acc' else _CONTRAST_TOL
            rows.append(compare(f'{base} {metric_key} ({mode})', np.asarray(value),
                                data[metric_key], **tol))
    return rows


def check_contrastive_loss(path: str, simulate: Optional[bool] = None) -> List[Row]:
    """Checks every `case_<id>` of a contrastive_loss.npz (single-replica and R-replica cases).

    R-replica cases run under a MirroredStrategy over R logical CPUs when that many exist;
    otherwise each replica's outputs are computed from the exact concatenation of all
    replicas' views, which is what the cross-replica gather builds. `simulate=True` forces
    that path, `simulate=False` insists on real replicas.
    """
    base = os.path.basename(path)
    rows = []
    with np.load(path) as data:
        cases = sorted(m.group(1) for k in data.files
                       if (m := re.match(r'^case_(.+)_num_replicas$', k)))
        if not cases:
            raise KeyError('no case_<id>_num_replicas entries')
        for case in cases:
            key = f'case_{case}'
            if f'{key}_hidden' not in data:
                rows += _replica_case_rows(base, data, key, simulate)
                continue
            out = objective.add_contrastive_loss(
                tf.constant(data[f'{key}_hidden'], tf.float32),
                bool(data[f'{key}_hidden_norm']), float(data[f'{key}_temperature']))
            rows += _contrastive_rows(f'{base} {key}', data, key, *out)
    return rows


# ----------------------------------------------------------------------------------- LARS

def _lars_hparam(data, case: str, name: str):
    return data[f'{case}_{name}'] if f'{case}_{name}' in data else data[name]


def _lars_list(data, case: str, name: str) -> Optional[List[str]]:
    for key in (f'{case}_{name}', name):
        if key in data:
            return [str(x) for x in np.atleast_1d(data[key])]
    return None


def check_lars(path: str) -> List[Row]:
    """Replays every case of a lars.npz and compares values and Momentum slots after each step."""
    base = os.path.basename(path)
    rows = []
    with np.load(path) as data:
        names = [str(n) for n in np.atleast_1d(data['var_names'])]
        num_steps = int(data['num_steps'])
        cases = sorted(m.group(1) for k in data.files if (m := re.match(r'^(.+)_use_nesterov$', k)))
        if not cases:
            raise KeyError('no <case>_use_nesterov entries')
        for case in cases:
            variables = [tf.Variable(data[f'var{i}_init'], name=n) for i, n in enumerate(names)]
            optimizer = LARSOptimizer(
                float(_lars_hparam(data, case, 'learning_rate')),
                momentum=float(_lars_hparam(data, case, 'momentum')),
                use_nesterov=bool(data[f'{case}_use_nesterov']),
                weight_decay=float(_lars_hparam(data, case, 'weight_decay')),
                exclude_from_weight_decay=_lars_list(data, case, 'exclude_from_weight_decay'),
                exclude_from_layer_adaptation=_lars_list(
                    data, case, 'exclude_from_layer_adaptation'),
                classic_momentum=bool(data[f'{case}_classic_momentum']),
                eeta=float(_lars_hparam(data, case, 'eeta')))
            for step in range(1, num_steps + 1):
                optimizer.apply_gradients(
                    [(tf.constant(data[f'var{i}_grad_step{step}']), v)
                     for i, v in enumerate(variables)])
                for i, var in enumerate(variables):
                    for what, actual in (('value', var),
                                         ('momentum', optimizer.get_slot(var, 'Momentum'))):
                        key = f'{case}_var{i}_{what}_step{step}'
                        rows.append(compare(f'{base} {key} ({names[i]})', actual.numpy(),
                                            data[key], atol=1e-6, rtol=1e-5))
    return rows


# ----------------------------------------------------------------------------------- CSVs

def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and re.fullmatch(r'[+-]?\d+', text.strip()) else value


def _read_csv(path: str) -> List[Dict[str, str]]:
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError('no data rows')
    return rows


_LR_CONFIG_COLUMNS = ('base_learning_rate', 'learning_rate_scaling', 'train_batch_size',
                      'num_train_examples', 'train_epochs', 'warmup_epochs', 'train_steps_flag')


def check_lr_schedule(path: str) -> List[Row]:
    """Per configuration: total and warmup steps (exact) and every row's learning rate."""
    base = os.path.basename(path)
    groups: Dict[tuple, List[Dict[str, str]]] = {}
    for line in _read_csv(path):
        key = tuple(line[c] for c in ('config_id',) + _LR_CONFIG_COLUMNS)
        groups.setdefault(key, []).append(line)
    rows = []
    for key, lines in groups.items():
        cfg = dict(zip(_LR_CONFIG_COLUMNS, key[1:]))
        sched = schedule.WarmUpAndCosineDecay(
            float(cfg['base_learning_rate']), _number(cfg['num_train_examples']),
            _number(cfg['train_batch_size']), cfg['learning_rate_scaling'].strip(),
            _number(cfg['warmup_epochs']), _number(cfg['train_epochs']),
            _number(cfg['train_steps_flag']))
        name = f'{base} config {key[0]}'
        for column, value in (('total_train_steps', sched.total_steps),
                              ('warmup_steps', sched.warmup_steps)):
            expected = {int(line[column]) for line in lines}
            if len(expected) != 1:
                raise ValueError(f'{name}: inconsistent {column} values {sorted(expected)}')
            rows.append(compare(f'{name} {column}', value, expected.pop()))
        steps = np.array([float(line['step']) for line in lines], np.float32)
        expected_lr = np.array([float(line['learning_rate']) for line in lines])
        rows.append(compare(f'{name} learning_rate ({len(lines)} steps)', sched(steps).numpy(),
                            expected_lr, atol=1e-6 * abs(sched.scaled_learning_rate)))
    return rows


def check_train_steps(path: str) -> List[Row]:
    """Every line's train/epoch/checkpoint/eval step counts, exactly."""
    base = os.path.basename(path)
    rows = []
    for number, line in enumerate(_read_csv(path), start=2):
        v = {k: _number(x) for k, x in line.items()}
        epoch_steps = schedule.get_epoch_steps(v['num_train_examples'], v['train_batch_size'])
        actual = {
            'train_steps': schedule.get_train_steps(
                v['num_train_examples'], v['train_batch_size'], v['train_epochs'],
                v['train_steps_flag']),
            'epoch_steps': epoch_steps,
            'checkpoint_steps': schedule.get_checkpoint_steps(
                v['checkpoint_steps_flag'], v['checkpoint_epochs'], epoch_steps),
            'eval_steps': schedule.get_eval_steps(
                v['eval_steps_flag'], v['num_eval_examples'], v['eval_batch_size']),
        }
        for column, value in actual.items():
            rows.append(compare(f'{base} line {number} {column}', value, v[column]))
    return rows


# --------------------------------------------------------------------------- augmentation

_AUG_TOL = dict(atol=1e-6)


def _augment_image_rows(base: str, data, index: str, crop_proportion: float) -> List[Row]:
    image_u8 = data[f'img{index}_uint8']
    image = tf.image.convert_image_dtype(image_u8, tf.float32)
    rows = []
    if f'img{index}_float' in data:
        rows.append(compare(f'{base} img{index}_float', image.numpy(), data[f'img{index}_float'],
                            **_AUG_TOL))
    sizes = sorted({int(m.group(1)) for k in data.files
                    if (m := re.match(rf'^img{index}_size(\d+)_', k))})
    for size in sizes:
        key = f'img{index}_size{size}'
        computed = {
            'crop_box': lambda: data_util.center_crop_box(
                image_u8.shape[0], image_u8.shape[1], size, size, crop_proportion),
            'center_crop': lambda: data_util.center_crop(image, size, size, crop_proportion),
            'preprocess_for_eval': lambda: data_util.preprocess_image(
                image_u8, size, size, is_training=False, test_crop=True),
        }
        for suffix, fn in computed.items():
            if f'{key}_{suffix}' in data:
                tol = {} if suffix == 'crop_box' else _AUG_TOL
                rows.append(compare(f'{base} {key}_{suffix}', fn().numpy(),
                                    data[f'{key}_{suffix}'], **tol))
    if f'img{index}_grayscale' in data:
        rows.append(compare(f'{base} img{index}_grayscale', data_util.to_grayscale(image).numpy(),
                            data[f'img{index}_grayscale'], **_AUG_TOL))
    return rows


def _blur_rows(base: str, data, case: str) -> List[Row]:
    kernel_size = int(data[f'blur{case}_kernel_size_arg'])
    sigma = float(data[f'blur{case}_sigma'])
    variants = {'output': ('blur_input', 'SAME'), 'output_valid': ('blur_input', 'VALID'),
                'impulse_output': ('blur_impulse_input', 'SAME')}
    rows = []
    for suffix, (source, padding) in variants.items():
        key = f'blur{case}_{suffix}'
        if key in data:
            out = data_util.gaussian_blur(tf.constant(data[source], tf.float32), kernel_size,
                                          sigma, padding=padding)
            rows.append(compare(f'{base} {key} (k={kernel_size}, sigma={sigma:g})', out.numpy(),
                                data[key], **_AUG_TOL))
    return rows


def check_augment(path: str) -> List[Row]:
    """Centre crop box, centre crop, eval preprocessing, grayscale and Gaussian blur arrays."""
    base = os.path.basename(path)
    rows = []
    with np.load(path) as data:
        crop_proportion = (float(data['crop_proportion']) if 'crop_proportion' in data
                           else data_util.CROP_PROPORTION)
        images = sorted((m.group(1) for k in data.files if (m := re.match(r'^img(\d+)_uint8$', k))),
                        key=int)
        for index in images:
            rows += _augment_image_rows(base, data, index, crop_proportion)
        blur_cases = sorted((m.group(1) for k in data.files
                             if (m := re.match(r'^blur(\d+)_sigma$', k))), key=int)
        for case in blur_cases:
            rows += _blur_rows(base, data, case)
    if not rows:
        raise KeyError('no img<I>_uint8 or blur<j>_sigma entries')
    return rows


# ---------------------------------------------------------------- model files (delegated)

def _delegate(function_name: str) -> Callable[[str], List[Row]]:
    def check(path: str) -> List[Row]:
        base = os.path.basename(path)
        try:
            from simclr_mura.fidelity import model_checks  # pylint: disable=import-outside-toplevel
            checker = getattr(model_checks, function_name)
        except (ImportError, AttributeError) as e:
            return [Row(f'{base}: simclr_mura.fidelity.model_checks.{function_name} unavailable '
                        f'({type(e).__name__}: {e})', math.nan, None, False)]
        return [row if base in row.name else row._replace(name=f'{base} {row.name}')
                for row in checker(path)]
    check.__name__ = function_name
    return check


check_forward = _delegate('check_forward')
check_manifest = _delegate('check_manifest')

# Glob pattern (relative to the fixture directory) -> checker.
CHECKERS = (
    ('contrastive_loss.npz', check_contrastive_loss),
    ('lars.npz', check_lars),
    ('lr_schedule.csv', check_lr_schedule),
    ('train_steps.csv', check_train_steps),
    ('augment_deterministic.npz', check_augment),
    ('forward.npz', check_forward),
    ('ckpt_manifest_*.txt', check_manifest),
)


def find_fixture_files(fixture_dir: str):
    """(path, checker) for every known fixture file in `fixture_dir`, in a stable order."""
    found = []
    for pattern, checker in CHECKERS:
        for path in sorted(glob.glob(os.path.join(glob.escape(fixture_dir), pattern))):
            found.append((path, checker))
    return found


def _replicas_needed(files) -> int:
    """Largest replica count of any contrastive case (read before TF initialises its devices)."""
    needed = 2
    for path, checker in files:
        if checker is check_contrastive_loss:
            try:
                with np.load(path) as data:
                    for k in data.files:
                        if k.endswith('_num_replicas'):
                            needed = max(needed, int(data[k]))
            except Exception:  # pylint: disable=broad-except
                pass  # The checker itself reports the unreadable file.
    return needed


def _format_number(value) -> str:
    if value is None:
        return '-'
    if isinstance(value, (float, np.floating)):
        return f'{float(value):.3g}'
    return str(value)


def run(fixture_dir: str, out=sys.stdout) -> int:
    """Runs every check, prints the table; returns the number of failures (errors included)."""
    files = find_fixture_files(fixture_dir)
    passed = failed = 0
    width = 78
    print(f'{"check":<{width}} {"max|diff|":>10} {"tolerance":>10}  result', file=out)
    for path, checker in files:
        try:
            rows = checker(path)
        except Exception as e:  # pylint: disable=broad-except
            message = ' '.join(str(e).split())  # one line, even for multi-line TF errors
            print(f'ERROR {path}: cannot read or check this file ({type(e).__name__}: {message})',
                  file=out)
            failed += 1
            continue
        for row in rows:
            print(f'{row.name:<{width}} {_format_number(row.max_abs_diff):>10} '
                  f'{_format_number(row.tolerance):>10}  {"PASS" if row.passed else "FAIL"}',
                  file=out)
            passed += bool(row.passed)
            failed += not row.passed
    print(f'{passed} passed, {failed} failed', file=out)
    return failed


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog='python -m simclr_mura.fidelity',
        description='Compare this SimCLR port with fixtures produced by the official code.')
    parser.add_argument('fixture_dir', help='directory with contrastive_loss.npz, lars.npz, ...')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.fixture_dir):
        print(f'error: {args.fixture_dir} is not a directory', file=sys.stderr)
        return 2
    files = find_fixture_files(args.fixture_dir)
    if not files:
        patterns = ', '.join(p for p, _ in CHECKERS)
        print(f'error: no fixture files ({patterns}) in {args.fixture_dir}', file=sys.stderr)
        return 2
    configure_logical_cpus(_replicas_needed(files))
    return 1 if run(args.fixture_dir) else 0

