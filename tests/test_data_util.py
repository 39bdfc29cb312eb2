"""Tests for simclr_mura.data_util: fixtures from the official code plus statistical invariants."""
import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from simclr_mura import data_util

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'official',
                       'augment_deterministic.npz')
IMAGES = (0, 1, 2)
SIZES = (32, 40, 64)


@pytest.fixture(scope='module')
def aug():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _binomial_bound(n, p, sigmas=4.0):
    return sigmas * math.sqrt(p * (1 - p) / n)


def _random_image(shape, seed):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


# --------------------------------------------------------------------------- fixtures

@pytest.mark.parametrize('image_shape, output_hw, expected', [
    # The original's center_crop asks _compute_crop_shape for the output's width / height: an output
    # as wide as the image keeps its shape; a tall output on a square image gets a tall crop.
    ((100, 200), (32, 64), [6, 13, 88, 175]),
    ((100, 100), (64, 32), [6, 28, 88, 44]),
    ((100, 100), (32, 64), [28, 6, 44, 88]),
])
def test_center_crop_box_keeps_the_output_aspect_ratio_width_over_height(image_shape, output_hw,
                                                                         expected):
    box = data_util.center_crop_box(*image_shape, *output_hw, 0.875)
    np.testing.assert_array_equal(box.numpy(), expected)
    crop = data_util.center_crop(np.zeros(image_shape + (3,), np.float32), *output_hw, 0.875)
    assert crop.shape == output_hw + (3,)


@pytest.mark.parametrize('index', IMAGES)
@pytest.mark.parametrize('size', SIZES)
def test_center_crop_matches_official(aug, index, size):
    image_u8 = aug[f'img{index}_uint8']
    key = f'img{index}_size{size}'
    box = data_util.center_crop_box(image_u8.shape[0], image_u8.shape[1], size, size,
                                    float(aug['crop_proportion']))
    np.testing.assert_array_equal(box.numpy(), aug[f'{key}_crop_box'])
    crop = data_util.center_crop(aug[f'img{index}_float'], size, size,
                                 float(aug['crop_proportion']))
    np.testing.assert_allclose(crop.numpy(), aug[f'{key}_center_crop'], rtol=0, atol=1e-6)
    # Eval preprocessing from uint8 and from the equivalent float image.
    for source in (image_u8, aug[f'img{index}_float']):
        out = data_util.preprocess_image(source, size, size, is_training=False, test_crop=True)
        assert out.dtype == tf.float32
        np.testing.assert_allclose(out.numpy(), aug[f'{key}_preprocess_for_eval'],
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize('index', IMAGES)
def test_grayscale_matches_official(aug, index):
    gray = data_util.to_grayscale(aug[f'img{index}_float'])
    np.testing.assert_allclose(gray.numpy(), aug[f'img{index}_grayscale'], rtol=0, atol=1e-6)
    single = data_util.to_grayscale(aug[f'img{index}_float'], keep_channels=False)
    assert single.shape[-1] == 1


@pytest.mark.parametrize('case', (0, 1))
def test_gaussian_blur_matches_official(aug, case):
    kernel_size = int(aug[f'blur{case}_kernel_size_arg'])
    sigma = float(aug[f'blur{case}_sigma'])
    assert kernel_size == int(aug['blur_image_size']) // 10
    same = data_util.gaussian_blur(aug['blur_input'], kernel_size, sigma, padding='SAME')
    np.testing.assert_allclose(same.numpy(), aug[f'blur{case}_output'], rtol=0, atol=1e-6)
    valid = data_util.gaussian_blur(aug['blur_input'], kernel_size, sigma, padding='VALID')
    np.testing.assert_allclose(valid.numpy(), aug[f'blur{case}_output_valid'], rtol=0, atol=1e-6)
    impulse = data_util.gaussian_blur(aug['blur_impulse_input'], kernel_size, sigma)
    np.testing.assert_allclose(impulse.numpy(), aug[f'blur{case}_impulse_output'],
                               rtol=0, atol=1e-6)
    single = data_util.gaussian_blur(aug['blur_input'][1], kernel_size, sigma)
    np.testing.assert_allclose(single.numpy(), aug[f'blur{case}_output'][1], rtol=0, atol=1e-6)


# ------------------------------------------------------------------- eval / shapes

def test_eval_without_crop_only_reshapes_and_clips():
    image = _random_image((32, 32, 3), 0) * 1.2 - 0.1
    out = data_util.preprocess_for_eval(image, 32, 32, crop=False)
    np.testing.assert_array_equal(out.numpy(), np.clip(image, 0, 1))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        data_util.preprocess_image(_random_image((40, 40, 3), 0), 32, 32, test_crop=False)


def test_grayscale_input_is_tiled_to_rgb():
    grey = np.random.default_rng(1).integers(0, 256, (50, 40, 1), dtype=np.uint8)
    rgb = data_util.grayscale_to_rgb(tf.constant(grey))
    assert rgb.shape == (50, 40, 3)
    np.testing.assert_array_equal(rgb.numpy(), np.repeat(grey, 3, axis=-1))
    colour = tf.constant(_random_image((5, 4, 3), 2))
    assert data_util.grayscale_to_rgb(colour) is colour
    with pytest.raises(ValueError, match='1 or 3 channels'):
        data_util.grayscale_to_rgb(tf.zeros([5, 4, 2]))
    # Channel count only known at run time (e.g. decode_image without `channels`).
    fn = tf.function(data_util.grayscale_to_rgb,
                     input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    np.testing.assert_array_equal(fn(grey).numpy(), np.repeat(grey, 3, axis=-1))
    out = data_util.preprocess_image(grey, 32, 32, is_training=False)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[..., 0].numpy(), out[..., 2].numpy())


def test_train_view_shape_range_in_tf_data():
    tf.random.set_seed(1)
    image = (_random_image((70, 50, 3), 3) * 255).astype(np.uint8)
    ds = tf.data.Dataset.from_tensors(image).repeat(64).map(
        lambda x: data_util.preprocess_image(x, 32, 32, is_training=True,
                                             color_jitter_strength=1.0))
    views = np.stack(list(ds.as_numpy_iterator()))
    assert views.shape == (64, 32, 32, 3)
    assert views.dtype == np.float32
    assert views.min() >= 0.0 and views.max() <= 1.0
    assert len({v.tobytes() for v in views}) > 60  # Views are random, not repeated.


# -------------------------------------------------------------- random statistics

def _train_views(image, n, seed_source, **kwargs):
    """n training views of `image` in tf.data, seeded globally or with explicit per-element seeds.

    'explicit' feeds seeds from `Dataset.random`, checking that sub-seeds of explicit seeds
    give the same distributions as the per-call drawn seeds of 'global'.
    """
    size = image.shape[0]
    if seed_source == 'global':
        ds = tf.data.Dataset.from_tensors(image).repeat(n).map(
            lambda x: data_util.preprocess_for_train(x, size, size, **kwargs))
    else:
        seeds = tf.data.Dataset.random(seed=12).batch(2).take(n)
        ds = tf.data.Dataset.zip(tf.data.Dataset.from_tensors(image).repeat(n), seeds).map(
            lambda x, s: data_util.preprocess_for_train(x, size, size, seed=s, **kwargs))
    return np.stack(list(ds.as_numpy_iterator()))


@pytest.mark.parametrize('seed_source', ('global', 'explicit'))
def test_flip_frequency_is_half(seed_source):
    tf.random.set_seed(2)
    image = _random_image((16, 16, 3), 4)
    n = 600
    views = _train_views(image, n, seed_source, color_jitter_strength=0., crop=False, flip=True)
    flipped = np.all(views == image[:, ::-1], axis=(1, 2, 3))
    unchanged = np.all(views == image, axis=(1, 2, 3))
    assert np.all(flipped ^ unchanged)
    assert abs(flipped.mean() - 0.5) <= _binomial_bound(n, 0.5)


def _crop_boxes(n, side, height, width, seed_source):
    def box(seed=None):
        return tf.stack(
            data_util.random_crop_box(tf.constant([side, side, 3]), height, width, seed=seed))

    if seed_source == 'global':
        ds = tf.data.Dataset.range(n).map(lambda _: box())
    else:
        ds = tf.data.Dataset.random(seed=13).batch(2).take(n).map(box)
    return np.stack(list(ds.as_numpy_iterator()))


@pytest.mark.parametrize('seed_source', ('global', 'explicit'))
def test_random_crop_boxes_respect_area_and_aspect(seed_source):
    tf.random.set_seed(3)
    side = 100
    oy, ox, h, w = _crop_boxes(1500, side, 64, 64, seed_source).T
    assert np.all(oy >= 0) and np.all(ox >= 0)
    assert np.all(oy + h <= side) and np.all(ox + w <= side)
    area = h * w / side ** 2
    # min_object_covered=0.1 with the whole image as object: at least 10 % of the image.
    assert area.min() >= 0.1 and area.max() <= 1.0
    # Aspect range (3/4, 4/3), up to rounding the sides to integers.
    aspect = w / h
    assert np.all(aspect >= 0.75 * (1 - 1.5 / h)) and np.all(aspect <= 4 / 3 * (1 + 1.5 / h))
    # Heights are drawn uniformly over the feasible range (~32 .. 100 px, minus the boxes
    # rejected for width > 100), so small and large crops are both common (observed over
    # seeds: P(area < 0.3) ~ 0.37, P(area > 0.7) ~ 0.15).
    assert np.mean(area < 0.3) > 0.25 and np.mean(area > 0.7) > 0.08
    # The smallest crops reach the lower area bound: with the original's area range (0.08, 1) the
    # bound is min_object_covered's 0.1, and about 7 % of the crops are below 0.135 (a lower
    # bound of 0.14 instead of 0.08 leaves none there).
    assert np.mean(area < 0.135) > 0.03
    # A wide target (width = 2 x height) scales the aspect range by 2.
    _, _, h, w = _crop_boxes(300, side, 32, 64, seed_source).T
    assert np.all(w / h >= 1.5 * (1 - 1.5 / h)) and np.all(w / h <= 8 / 3 * (1 + 1.5 / h))
    assert np.mean(w / h > 2.0) > 0.2


def test_colour_jitter_strength_zero_is_identity():
    image = _random_image((16, 16, 3), 5)
    np.testing.assert_array_equal(data_util.color_jitter(image, 0.).numpy(), image)
    tf.random.set_seed(4)
    for _ in range(5):
        out = data_util.preprocess_for_train(image, 16, 16, 0., crop=False, flip=False)
        np.testing.assert_array_equal(out.numpy(), image)


@pytest.mark.parametrize('seed_source', ('global', 'explicit'))
def test_colour_distortion_and_grayscale_probabilities(seed_source):
    tf.random.set_seed(5)
    image = _random_image((8, 8, 3), 6)
    n = 800
    views = _train_views(image, n, seed_source, color_jitter_strength=1.0, crop=False, flip=False)
    grey = np.all(views[..., 0] == views[..., 1], axis=(1, 2)) & np.all(
        views[..., 1] == views[..., 2], axis=(1, 2))
    untouched = np.all(views == image, axis=(1, 2, 3))
    # Grayscale is independent of the jitter: p = 0.2; nothing applied: 0.2 * 0.8.
    assert abs(grey.mean() - 0.2) <= _binomial_bound(n, 0.2)
    assert abs(untouched.mean() - 0.16) <= _binomial_bound(n, 0.16)
    assert views.min() >= 0 and views.max() <= 1


def test_brightness_factor_range():
    tf.random.set_seed(6)
    image = np.full((2, 2, 3), 0.5, np.float32)
    factors = np.array([data_util.random_brightness(image, 0.8).numpy()[0, 0, 0] / 0.5
                        for _ in range(300)])
    assert factors.min() >= 0.2 - 1e-6 and factors.max() <= 1.8 + 1e-6
    assert factors.min() < 0.3 and factors.max() > 1.7
    strong = np.array([data_util.random_brightness(image, 1.6).numpy()[0, 0, 0] / 0.5
                       for _ in range(100)])
    assert strong.min() >= 0.0  # Lower end max(1 - 1.6, 0) = 0.


# --------------------------------------------------------------------------- blur

def _impulse_batch(batch, size=64):
    images = np.zeros((batch, size, size, 3), np.float32)
    images[:, size // 2, size // 2, :] = 1.0
    return images


def test_batch_random_blur_shares_sigma_and_blurs_half():
    tf.random.set_seed(7)
    batch, calls, centre = 16, 150, 32
    images = _impulse_batch(batch)
    blur = tf.function(lambda x: data_util.batch_random_blur([x, x], 64, 64))
    sigmas, blurred_count, total = [], 0, 0
    for _ in range(calls):
        for out in blur(images):
            out = out.numpy()
            assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
            changed = np.any(np.abs(out - images) > 0, axis=(1, 2, 3))
            if not changed.any():
                continue  # sigma so small that the blur is invisible in float32, or none chosen
            blurred = out[changed]
            # Every blurred example in the batch has the same kernel (one shared sigma).
            np.testing.assert_allclose(blurred, np.broadcast_to(blurred[:1], blurred.shape),
                                       rtol=0, atol=1e-7)
            ratio = blurred[0, centre + 1, centre, 0] / blurred[0, centre, centre, 0]
            if ratio > 1e-6:
                sigmas.append(math.sqrt(-1.0 / (2.0 * math.log(ratio))))
                blurred_count += int(changed.sum())
                total += batch
    sigmas = np.array(sigmas)
    assert sigmas.min() >= 0.1 - 1e-3 and sigmas.max() <= 2.0 + 1e-3
    assert sigmas.max() - sigmas.min() > 1.0  # sigma varies from call to call
    # Calls with a visible blur are those with sigma >~ 0.2; their sigma is U(0.2, 2).
    assert abs(sigmas.mean() - 1.1) <= 4 * (1.8 / math.sqrt(12)) / math.sqrt(len(sigmas))
    # Per-example Bernoulli(0.5) (a call with no example chosen is skipped above,
    # a bias of 0.5**16, negligible).
    assert abs(blurred_count / total - 0.5) <= _binomial_bound(total, 0.5)


def test_batch_random_blur_probability_extremes():
    tf.random.set_seed(8)
    images = _random_image((4, 32, 32, 3), 7)
    never = data_util.batch_random_blur([images], 32, 32, blur_probability=0.0)[0]
    np.testing.assert_array_equal(never.numpy(), images)
    same_inputs = np.repeat(images[:1], 4, axis=0)
    changed = []
    for _ in range(10):
        always = data_util.batch_random_blur([same_inputs], 32, 32, blur_probability=1.0)[0]
        always = always.numpy()
        # Identical inputs, all blurred with the one shared sigma -> identical outputs.
        np.testing.assert_array_equal(always, np.repeat(always[:1], 4, axis=0))
        changed.append(np.any(always != same_inputs))
    assert sum(changed) >= 8


# ------------------------------------------------------------------------- seeding

def _two_views(image, size=32):
    """The two-view map function of the pretraining pipeline (as in `data._map_fn`)."""
    return data_util.preprocess_views(image, size, size, 1.0, [None, None])


def _seeded_two_view_run(global_seed, n=12, size=32):
    """Two-view tf.data pipeline plus the model's batch blur, with a global seed (run.py --seed)."""
    tf.random.set_seed(global_seed)
    image = np.random.default_rng(9).integers(0, 256, (60, 45, 1), dtype=np.uint8)
    ds = tf.data.Dataset.from_tensors(image).repeat(n).map(
        lambda x: _two_views(x, size)).batch(n)
    views = next(iter(ds))
    blur = tf.function(lambda x: tf.concat(
        data_util.batch_random_blur(tf.split(x, 2, axis=-1), size, size), -1))
    return views.numpy(), blur(views).numpy()


def _differs(a, b):
    return not np.allclose(a, b, rtol=0, atol=1e-6)


def test_two_views_in_one_map_fn_differ_with_global_seed():
    # With a global seed, TF seeds each stateful op from its graph's op counter; an op inside a
    # cond branch would get the same seed in view 1 and view 2 and draw the same numbers.
    for global_seed in (0, 1):
        views, _ = _seeded_two_view_run(global_seed, n=20, size=48)
        for v in views:
            first, second = np.split(v, 2, axis=-1)  # grey views: one channel each
            assert _differs(first, second)


def test_batch_blur_sigma_differs_between_views_with_global_seed():
    tf.random.set_seed(0)
    images = _impulse_batch(2)
    blur = tf.function(lambda x: data_util.batch_random_blur([x, x], 64, 64,
                                                             blur_probability=1.0))
    for _ in range(5):
        first, second = (out.numpy() for out in blur(images))
        assert _differs(first[0], second[0])


def test_train_view_is_a_pure_function_of_image_and_seed():
    image = _random_image((40, 30, 3), 8)
    fn = tf.function(lambda x, s: data_util.preprocess_for_train(x, 24, 24, 1.0, seed=s))
    outputs = {}
    for seed in ([1, 2], [1, 3], [2, 2]):
        a = data_util.preprocess_for_train(image, 24, 24, 1.0, seed=tf.constant(seed))
        tf.random.set_seed(seed[1])  # The global seed must not matter once a seed is given.
        b = fn(image, tf.constant(seed, tf.int64))
        c = data_util.preprocess_image(image, 24, 24, is_training=True,
                                       color_jitter_strength=1.0, seed=seed)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(a.numpy(), c.numpy())
        outputs[tuple(seed)] = a.numpy()
    values = list(outputs.values())
    assert all(_differs(values[i], values[j]) for i in range(3) for j in range(i + 1, 3))


def test_explicit_seed_drives_every_random_function():
    image = _random_image((20, 20, 3), 10)
    seed = tf.constant([5, 6])
    calls = {
        'crop_box': lambda s: tf.stack(data_util.random_crop_box(tf.constant([20, 20, 3]),
                                                                 16, 16, seed=s)),
        'crop': lambda s: data_util.random_crop_with_resize(image, 16, 16, seed=s),
        'jitter': lambda s: data_util.color_jitter(image, 1.0, seed=s),
        'colour': lambda s: data_util.random_color_jitter(image, strength=1.0, seed=s),
        'brightness': lambda s: data_util.random_brightness(image, 0.8, seed=s),
        'brightness_v1': lambda s: data_util.random_brightness(image, 0.8, 'simclrv1', seed=s),
        'blur': lambda s: data_util.random_blur(image, 20, 20, seed=s),
        'batch_blur': lambda s: data_util.batch_random_blur([image[None]] * 2, 20, 20, seed=s),
    }
    for name, call in calls.items():
        outs = [np.asarray(call(seed)) for _ in range(2)]
        np.testing.assert_array_equal(outs[0], outs[1], err_msg=name)
        others = [np.asarray(call(tf.constant([5, k]))) for k in range(7, 17)]
        assert any(_differs(outs[0], o) for o in others), name


def test_bad_seed_is_rejected():
    image = _random_image((20, 20, 3), 11)
    with pytest.raises(ValueError, match='seed'):
        data_util.preprocess_for_train(image, 16, 16, seed=tf.constant([1, 2, 3]))
    with pytest.raises(ValueError, match='seed'):
        data_util.preprocess_for_train(image, 16, 16, seed=tf.constant([1.0, 2.0]))


def test_global_seed_makes_runs_repeatable():
    views_a, blurred_a = _seeded_two_view_run(3)
    views_b, blurred_b = _seeded_two_view_run(3)
    np.testing.assert_array_equal(views_a, views_b)
    np.testing.assert_array_equal(blurred_a, blurred_b)
    views_c, _ = _seeded_two_view_run(4)
    assert _differs(views_a, views_c)


_OP_DETERMINISM_SCRIPT = '''
import hashlib, sys
import numpy as np, tensorflow as tf, tf_keras
sys.path.insert(0, sys.argv[1])
import test_data_util as t
tf.config.experimental.enable_op_determinism()
tf_keras.utils.set_random_seed(3)
runs = [t._seeded_two_view_run(3) for _ in range(2)]
for a, b in zip(*runs):
    np.testing.assert_array_equal(a, b)
views = runs[0][0]
assert all(t._differs(*np.split(v, 2, axis=-1)) for v in views)
print(hashlib.sha256(views.tobytes() + runs[0][1].tobytes()).hexdigest())
'''


def test_op_determinism_runs_and_matches():
    # enable_op_determinism cannot be switched off again, so it runs in its own process.
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, '-c', _OP_DETERMINISM_SCRIPT, tests_dir],
                          cwd=os.path.dirname(tests_dir), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    views, blurred = _seeded_two_view_run(3)
    expected = hashlib.sha256(views.tobytes() + blurred.tobytes()).hexdigest()
    assert proc.stdout.strip().splitlines()[-1] == expected


def test_grey_colour_ops_leave_grey_pixels_unchanged():
    # Why the grey path may skip saturation and hue: on R = G = B they give back the input
    # exactly, also outside [0, 1] (the bicubic resize overshoots; the first clip comes after the
    # first op), and grayscale is not the identity but the tiled copy's value (weights sum to
    # 0.9999).
    values = np.concatenate([np.linspace(-0.6, 1.6, 4001), [0., 1., -0., 1e-30, -1e-30, 3e3,
                                                            -3e3]]).astype(np.float32)
    grey = values.reshape(-1, 1, 1)
    rgb = np.repeat(grey, 3, axis=-1)
    for factor in (0., 0.2, 0.77, 1., 1.3, 1.8):
        np.testing.assert_array_equal(tf.image.adjust_saturation(rgb, factor).numpy(), rgb)
    for delta in (-0.2, -0.13, -1e-9, 0., 1e-9, 0.05, 0.2, 0.5, 1.):
        np.testing.assert_array_equal(tf.image.adjust_hue(rgb, delta).numpy(), rgb)
    via_rgb = tf.image.rgb_to_grayscale(rgb).numpy()
    assert np.any(via_rgb != grey)
    np.testing.assert_array_equal(data_util.to_grayscale(grey, keep_channels=False).numpy(),
                                  via_rgb)
    np.testing.assert_array_equal(data_util.to_grayscale(grey).numpy(),
                                  data_util.to_grayscale(rgb).numpy())


def _views_by_seed(image, seeds, fn):
    """fn(image, seed) for every seed, mapped in tf.data (one trace), as one array."""
    ds = tf.data.Dataset.from_tensor_slices(seeds).map(lambda s: fn(tf.constant(image), s))
    return np.stack(list(ds.as_numpy_iterator()))


@pytest.mark.slow  # 200 seeds per shape: minutes on 2 cores
@pytest.mark.parametrize('shape', ((90, 70), (57, 83), (49, 129)))
def test_grey_path_gives_the_same_views_as_rgb_input(shape):
    # 1-channel input is augmented on 1 channel and tiled at the end (data_util docstring); the
    # views must equal those of the original order: whole image -> float -> RGB -> crop, for
    # every random draw. Noise images make the bicubic resize overshoot [0, 1].
    grey = np.random.default_rng(shape[0]).integers(0, 256, shape + (1,), dtype=np.uint8)
    rgb_float = data_util.grayscale_to_rgb(tf.image.convert_image_dtype(grey, tf.float32)).numpy()
    seeds = np.random.default_rng(7).integers(0, 2**31, (200, 2))
    for size in (48, 33):
        for jitter in (0.5, 1.0):
            for impl in ('simclrv2', 'simclrv1'):
                def view(image, seed, size=size, jitter=jitter, impl=impl):
                    return data_util.preprocess_for_train(image, size, size, jitter, impl=impl,
                                                          seed=seed)
                # 200 seeds take every branch (grayscale p = 0.2, each op order position).
                direct = _views_by_seed(grey, seeds, view)
                rgb_views = _views_by_seed(rgb_float, seeds, view)
                np.testing.assert_array_equal(direct, rgb_views,
                                              err_msg=f'{size} px, jitter {jitter}, {impl}')
                if impl == 'simclrv2':  # Two views as data.py makes them.
                    def pair(image, two_seeds, size=size, jitter=jitter):
                        return data_util.preprocess_views(image, size, size, jitter,
                                                          tf.unstack(two_seeds))
                    expected = np.concatenate([rgb_views[0::2], rgb_views[1::2]], -1)
                    np.testing.assert_array_equal(
                        _views_by_seed(rgb_float, seeds.reshape(100, 2, 2), pair), expected)
                    # Grey views stay 1-channel: the model tiles them (tests/test_model.py).
                    grey_pairs = _views_by_seed(grey, seeds.reshape(100, 2, 2), pair)
                    assert grey_pairs.shape == (100, size, size, 2)
                    np.testing.assert_array_equal(np.repeat(grey_pairs, 3, axis=-1), expected)
    tiled = data_util.grayscale_to_rgb(grey).numpy()
    for size in (48, 33):
        for crop, image in ((True, grey), (False, grey[:size, :size])):
            direct = data_util.preprocess_image(image, size, size, is_training=False,
                                                test_crop=crop)
            expected = data_util.preprocess_for_eval(
                data_util.grayscale_to_rgb(tf.image.convert_image_dtype(image, tf.float32)),
                size, size, crop=crop)
            np.testing.assert_array_equal(direct.numpy(), expected.numpy())
    # The preprocess_image entry point (what data.py calls) gives the same training view.
    seed = tf.constant(seeds[0])
    np.testing.assert_array_equal(
        data_util.preprocess_image(grey, 48, 48, is_training=True, color_jitter_strength=1.0,
                                   seed=seed).numpy(),
        data_util.preprocess_for_train(tiled, 48, 48, 1.0, seed=seed).numpy())
    # crop=False in training converts the whole image.
    whole = data_util.preprocess_for_train(grey, *shape, 0., crop=False, flip=False)
    np.testing.assert_array_equal(whole.numpy(), np.clip(rgb_float, 0, 1))


def test_grey_path_works_on_one_channel():
    # The saving: a statically 1-channel image stays 1-channel up to the final tile.
    grey = np.random.default_rng(12).integers(0, 256, (50, 40, 1), dtype=np.uint8)
    seed = tf.constant([3, 4])
    assert data_util.is_grey(grey) and not data_util.is_grey(np.repeat(grey, 3, axis=-1))
    assert data_util.crop_and_resize(grey, 24, 24, seed=seed, rgb=False).shape == (24, 24, 1)
    assert data_util.center_crop(grey, 24, 24, 0.875, rgb=False).shape == (24, 24, 1)
    as_float = tf.image.convert_image_dtype(grey, tf.float32)
    assert data_util.random_color_jitter(as_float, strength=1.0, seed=seed).shape == (50, 40, 1)
    # A channel count only known at run time keeps the RGB path (and still works).
    fn = tf.function(lambda x, s: data_util.preprocess_for_train(x, 24, 24, 1.0, seed=s),
                     input_signature=[tf.TensorSpec([None, None, None], tf.uint8),
                                      tf.TensorSpec([2], tf.int32)])
    np.testing.assert_array_equal(
        fn(grey, seed).numpy(), data_util.preprocess_for_train(grey, 24, 24, 1.0, seed=seed).numpy())
    # The input pipeline's entry point keeps the one channel; the public RGB ones tile it.
    for is_training in (True, False):
        view = data_util.preprocess_view(grey, 24, 24, is_training, 1.0, seed=seed)
        rgb = data_util.preprocess_image(grey, 24, 24, is_training, 1.0, seed=seed)
        assert view.shape == (24, 24, 1) and rgb.shape == (24, 24, 3)
        np.testing.assert_array_equal(np.repeat(view.numpy(), 3, axis=-1), rgb.numpy())


def test_interleave_grey_views_equals_concat():
    views = [tf.constant(np.random.default_rng(k).uniform(0, 1, (33, 47, 1)).astype(np.float32))
             for k in range(3)]
    for k in (1, 2, 3):
        out = data_util.interleave_grey_views(views[:k])
        assert out.shape == (33, 47, k)
        np.testing.assert_array_equal(out.numpy(), tf.concat(views[:k], -1).numpy())


def test_crop_min_area_bounds_the_crop_and_defaults_to_the_original():
    side = 100

    def areas(**kwargs):
        boxes = [data_util.random_crop_box(tf.constant([side, side, 1]), 64, 64,
                                           seed=tf.constant([s, 7]), **kwargs) for s in range(300)]
        return np.array([float(h * w) / side ** 2 for _, _, h, w in boxes])

    original, large = areas(), areas(area_range=(0.5, 1.0))
    assert original.min() < 0.3 and large.min() >= 0.5 * (1 - 3 / 71)  # sides rounded to pixels
    # The default is the original's range: the same boxes as passing (0.08, 1.0) explicitly.
    np.testing.assert_array_equal(original, areas(area_range=(0.08, 1.0)))
    # Through a training view: a minimum of the whole image keeps the whole (square) image.
    image = _random_image((64, 64, 1), 9)
    seed = tf.constant([5, 6])
    whole = data_util.train_view(image, 64, 64, 0., seed=seed, crop_min_area=1.0)
    uncropped = data_util.train_view(image, 64, 64, 0., crop=False, seed=seed)
    np.testing.assert_allclose(whole.numpy(), uncropped.numpy(), atol=1e-5)
    cropped = data_util.train_view(image, 64, 64, 0., seed=seed)
    assert np.abs(cropped.numpy() - uncropped.numpy()).max() > 0.05
