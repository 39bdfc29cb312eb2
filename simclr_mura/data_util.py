"""SimCLR image augmentations (behaviour of google-research/simclr `tf2/data_util.py`).

Every function is a pure TensorFlow function with explicit arguments, usable inside
`tf.data` map functions and `tf.function`. Images are float32 in [0, 1] unless a function
says otherwise.

Randomness: every random function takes an optional `seed` (shape [2], int32 or int64) and
draws all its numbers with stateless ops from sub-seeds of it, so with a seed the output is a
pure function of (input, seed). Without a seed, the function draws one with a single stateful
op at the top of the call, outside any `tf.cond`, so a global `tf.random.set_seed` makes a run
repeatable. Why not stateful ops throughout: under a global seed TF derives an op's seed from
the op counter of the graph holding it, and every cond branch has its own counter, so the same
op in the branches of two calls (the two views of one map function) would get the same seed
and draw the same numbers. Code that calls these functions inside a cond should pass a seed.

Two-view pretraining uses `preprocess_views(image, ..., seeds=[s1, s2])` in the input pipeline
(the two `preprocess_for_train` views side by side, a grey image's views left 1-channel); the
Gaussian blur is *not* part of the pipeline but is applied by the model on each view's batch with
`batch_random_blur`, and the model tiles grey views to RGB after it (`model.Model`).
`preprocess_image`, `preprocess_for_train` and `preprocess_for_eval` always return RGB;
`preprocess_view`, `train_view` and `eval_view` keep a grey image's one channel.

Speed, with the same views as the original's order (decode, whole image -> float RGB, crop):
* The crops (random resized crop, eval centre crop) take the decoded image as it is (uint8, 1 or
  3 channels) and convert only the cropped pixels to float just before the resize; the conversion
  is per pixel, so converting first gives the same values.
* Grey path: an image whose channel count is statically 1 (MURA radiographs, decoded with
  channels=1) is cropped, resized, flipped and colour-jittered on that one channel and tiled to
  RGB only after the final clip. On R = G = B every op of the original acts on each channel alike
  and gives R = G = B again: resize, flip, brightness, contrast (per-channel mean) per channel;
  saturation and hue give each grey pixel back unchanged, so they are skipped; random grayscale
  is computed on the 3-tiled copy (its weights sum to 0.9999, so it is not the identity). The
  random draws are the same (saturation's and hue's go unused), so a seed gives the same view bit
  for bit on both paths (tests/test_data_util.py checks it over 200 seeds). An unknown channel
  count takes the RGB path. Two-view input costs about 45% less CPU (benchmarks/bench_input.py).
  The input pipeline leaves the grey views untiled (`preprocess_views`, `preprocess_view`) and the
  model tiles them on the device: 3x less data per example to write, batch and copy.
"""
from typing import List, Optional, Sequence

import tensorflow as tf

CROP_PROPORTION = 0.875  # Standard central-crop ratio for ImageNet-style evaluation.

# Random-resized-crop constants of the original.
_MIN_OBJECT_COVERED = 0.1
_AREA_RANGE = (0.08, 1.0)
DEFAULT_CROP_MIN_AREA = _AREA_RANGE[0]
_MAX_ATTEMPTS = 100

_BICUBIC = tf.image.ResizeMethod.BICUBIC


def resolve_seed(seed=None) -> tf.Tensor:
    """Returns `seed` as a shape [2] int64 tensor (given as int32/int64), or draws one if None.

    The fresh seed comes from one stateful op in the caller's graph: outside any cond it gets
    its own op seed under a global `tf.random.set_seed`, so every call draws a different seed.
    """
    if seed is None:
        return tf.cast(tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32), tf.int64)
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64) or not seed.shape.is_compatible_with([2]):
        raise ValueError(f'A seed must be a shape [2] int32 or int64 tensor, got {seed.dtype.name} '
                         f'with shape {seed.shape}; e.g. tf.constant([1, 2]) or pass seed=None.')
    # One dtype, so a seed's value alone fixes the draws (stateless_split depends on the dtype).
    return tf.ensure_shape(tf.cast(seed, tf.int64), [2])


def _split(seed, num: int) -> List[tf.Tensor]:
    """`num` independent sub-seeds of `seed` (None draws a seed first)."""
    return tf.unstack(tf.random.experimental.stateless_split(resolve_seed(seed), num=num))


def _uniform(seed, shape=(), minval=0., maxval=1.) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval,
                                       dtype=tf.float32)


def random_apply(func, p, x, seed=None, otherwise=None):
    """Returns `func(x)` with probability `p`, else `x` or `otherwise(x)` if given (one uniform
    draw from `seed`)."""
    if isinstance(p, (int, float)) and p >= 1:
        # The draw is in [0, 1), so always below p: no cond (a cost per view), no draw (the seed
        # is this call's own, so no other draw changes).
        return func(x)
    return tf.cond(
        tf.less(_uniform(resolve_seed(seed)), tf.cast(p, tf.float32)),
        lambda: func(x),
        lambda: x if otherwise is None else otherwise(x))


def grayscale_to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Returns a 3-channel image: 1-channel input (e.g. a MURA radiograph) is tiled to RGB.

    3-channel input is returned unchanged. This is the single place where grey images
    enter the RGB augmentation pipeline, which (like the original) assumes 3 channels.
    """
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.tile(image, [1] * (image.shape.rank - 1) + [3])
    if channels is not None:
        raise ValueError(
            f'Expected an image with 1 or 3 channels, got shape {image.shape}. '
            'Decode images with channels=1 or channels=3.')
    # Channel count unknown at trace time (e.g. decode_image without `channels`).
    num = tf.shape(image)[-1]
    check = tf.debugging.Assert(
        tf.logical_or(tf.equal(num, 1), tf.equal(num, 3)),
        ['Expected an image with 1 or 3 channels, got', num])
    with tf.control_dependencies([check]):
        tiled = tf.cond(tf.equal(num, 1),
                        lambda: tf.repeat(image, 3, axis=-1),
                        lambda: tf.identity(image))
    tiled.set_shape(image.shape[:-1].concatenate([3]))
    return tiled


def is_grey(image: tf.Tensor) -> bool:
    """True if `image` has statically 1 channel: such images take the grey fast path."""
    return tf.convert_to_tensor(image).shape[-1] == 1


def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
    """float32 RGB in [0, 1]: integer images are scaled by 1 / max (`convert_image_dtype`), grey is
    tiled to 3 channels; a float32 RGB image is returned unchanged."""
    return grayscale_to_rgb(tf.image.convert_image_dtype(image, dtype=tf.float32))


def to_float(image: tf.Tensor, rgb: bool) -> tf.Tensor:
    """`to_float_rgb` if `rgb`, else the same conversion keeping the image's channels."""
    if rgb:
        return to_float_rgb(image)
    return tf.image.convert_image_dtype(image, dtype=tf.float32)


def to_grayscale(image: tf.Tensor, keep_channels: bool = True) -> tf.Tensor:
    """ITU-R 601 luma (`tf.image.rgb_to_grayscale`), tiled back to 3 channels if asked.

    A 1-channel image gives what its 3-tiled copy gives. That is not the identity: the weights sum
    to 0.9999 and the matmul rounds, so the tiled copy is computed rather than imitated.
    """
    if is_grey(image):
        image = tf.tile(image, [1, 1, 3])
    image = tf.image.rgb_to_grayscale(image)
    if keep_channels:
        image = tf.tile(image, [1, 1, 3])
    return image


def random_brightness(image, max_delta, impl='simclrv2', seed=None):
    """Brightness jitter.

    'simclrv2' (used by SimCLR v2 and the TF2 code): multiply by a factor drawn from
    U[max(1 - max_delta, 0), 1 + max_delta]. 'simclrv1': additive `random_brightness`.
    """
    if impl == 'simclrv2':
        factor = _uniform(resolve_seed(seed), minval=tf.maximum(1.0 - max_delta, 0),
                          maxval=1.0 + max_delta)
        return image * factor
    if impl == 'simclrv1':
        return tf.image.stateless_random_brightness(image, max_delta=max_delta,
                                                    seed=resolve_seed(seed))
    raise ValueError(f'Unknown brightness impl {impl!r}; use "simclrv2" or "simclrv1".')


def _jitter_ops(brightness, contrast, saturation, hue, impl, seeds, grey):
    """The four colour ops, op k drawing from seeds[k]; a zero strength makes it the identity.

    `grey` (a 1-channel image standing for R = G = B): saturation and hue map such a pixel to
    itself exactly, for any value (the HSV kernels get chroma 0 and give back v, also for v
    outside [0, 1]; tests/test_data_util.py checks it), so they are the identity; their draws
    come from their own sub-seeds, so skipping them changes no other draw.
    """
    def make(strength, op, colour_only=False):
        if strength == 0 or (grey and colour_only):
            return lambda x: x
        return op

    return [
        make(brightness, lambda x: random_brightness(x, max_delta=brightness, impl=impl,
                                                     seed=seeds[0])),
        make(contrast, lambda x: tf.image.stateless_random_contrast(
            x, lower=1 - contrast, upper=1 + contrast, seed=seeds[1])),
        make(saturation, lambda x: tf.image.stateless_random_saturation(
            x, lower=1 - saturation, upper=1 + saturation, seed=seeds[2]), colour_only=True),
        make(hue, lambda x: tf.image.stateless_random_hue(x, max_delta=hue, seed=seeds[3]),
             colour_only=True),
    ]


def color_jitter_rand(image, brightness=0, contrast=0, saturation=0, hue=0, impl='simclrv2',
                      seed=None):
    """Applies brightness, contrast, saturation and hue in a random order, clipping after each.

    A 1-channel image is jittered as its 3-tiled copy would be, on one channel (`_jitter_ops`)."""
    order_seed, *op_seeds = _split(seed, 5)
    ops = _jitter_ops(brightness, contrast, saturation, hue, impl, op_seeds, is_grey(image))
    # The ranks of 4 i.i.d. uniforms are a uniformly random permutation.
    order = tf.argsort(_uniform(order_seed, [4]))
    for i in range(4):
        branches = [(lambda op=op, x=image: op(x)) for op in ops]
        image = tf.switch_case(order[i], branches)
        image = tf.clip_by_value(image, 0., 1.)
    return image


def color_jitter(image, strength, impl='simclrv2', seed=None):
    """Colour jitter of strength s: brightness/contrast/saturation 0.8s, hue 0.2s, in a random order
    (the original's default `random_order=True`; its fixed-order variant is unused and not ported)."""
    return color_jitter_rand(image, brightness=0.8 * strength, contrast=0.8 * strength,
              saturation=0.8 * strength, hue=0.2 * strength, impl=impl, seed=seed)


def random_color_jitter(image, p=1.0, strength=1.0, impl='simclrv2', seed=None):
    """With prob p: colour jitter (p=0.8), then independently grayscale (p=0.2).

    A 1-channel image stays 1-channel and gets what its 3-tiled copy would get (per channel)."""
    apply_seed, jitter_apply_seed, jitter_seed, gray_apply_seed = _split(seed, 4)
    keep_channels = not is_grey(image)

    def _transform(x):
        x = random_apply(lambda y: color_jitter(y, strength=strength, impl=impl, seed=jitter_seed),
                         p=0.8, x=x, seed=jitter_apply_seed)
        return random_apply(lambda y: to_grayscale(y, keep_channels=keep_channels), p=0.2, x=x,
                            seed=gray_apply_seed)
    return random_apply(_transform, p=p, x=image, seed=apply_seed)


def center_crop_box(image_height, image_width, height, width, crop_proportion):
    """Returns `[offset_height, offset_width, crop_height, crop_width]` (int32) of the eval crop.

    The crop keeps the requested aspect ratio and covers `crop_proportion` of the limiting
    side (sides rounded with rint, offset `((dim - crop) + 1) // 2`). As in the original's
    `center_crop`, the requested ratio is the output's `width / height`, compared with the
    image's `width / height`.
    """
    aspect_ratio = width / height
    image_height = tf.cast(image_height, tf.int32)
    image_width = tf.cast(image_width, tf.int32)
    h_float = tf.cast(image_height, tf.float32)
    w_float = tf.cast(image_width, tf.float32)

    def _limited_by_width():
        return (tf.cast(tf.math.rint(crop_proportion / aspect_ratio * w_float), tf.int32),
                tf.cast(tf.math.rint(crop_proportion * w_float), tf.int32))

    def _limited_by_height():
        return (tf.cast(tf.math.rint(crop_proportion * h_float), tf.int32),
                tf.cast(tf.math.rint(crop_proportion * aspect_ratio * h_float), tf.int32))

    crop_height, crop_width = tf.cond(aspect_ratio > w_float / h_float,
                                      _limited_by_width, _limited_by_height)
    offset_height = ((image_height - crop_height) + 1) // 2
    offset_width = ((image_width - crop_width) + 1) // 2
    return tf.stack([offset_height, offset_width, crop_height, crop_width])


def center_crop(image, height, width, crop_proportion, rgb=True):
    """Central crop (see `center_crop_box`) resized to (height, width) with bicubic; not clipped.

    `image` may also be uint8 and/or 1-channel: the crop is converted with `to_float(.., rgb)`, so
    `rgb=False` keeps a grey image 1-channel.
    """
    shape = tf.shape(image)
    box = center_crop_box(shape[0], shape[1], height, width, crop_proportion)
    image = to_float(tf.image.crop_to_bounding_box(image, box[0], box[1], box[2], box[3]), rgb)
    return tf.image.resize([image], [height, width], method=_BICUBIC)[0]


def random_crop_box(image_shape, height, width, seed=None, area_range=_AREA_RANGE):
    """Samples SimCLR's random crop box for an image of `image_shape` (H, W, C).

    `sample_distorted_bounding_box` with the whole image as the object box,
    min_object_covered 0.1, aspect ratios (3/4, 4/3) x width/height, area (0.08, 1.0) of
    the image (`area_range`; the port's --crop_min_area raises the lower bound) and 100 attempts;
    if no box is found it returns the whole image.
    Returns (offset_y, offset_x, crop_height, crop_width) int32 scalars.
    """
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
    aspect_ratio = width / height
    # The stateless op samples the same distribution as the original's stateful op.
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=bbox,
        seed=resolve_seed(seed),
        min_object_covered=_MIN_OBJECT_COVERED,
        aspect_ratio_range=(3. / 4 * aspect_ratio, 4. / 3. * aspect_ratio),
        area_range=area_range,
        max_attempts=_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    offset_y, offset_x, _ = tf.unstack(begin)
    crop_height, crop_width, _ = tf.unstack(size)
    return offset_y, offset_x, crop_height, crop_width


def crop_and_resize(image, height, width, seed=None, rgb=True, area_range=_AREA_RANGE):
    """Random resized crop (`random_crop_box`) to (height, width): bicubic, no antialias.

    `image` may also be uint8 and/or 1-channel: the crop is converted with `to_float(.., rgb)`.
    """
    offset_y, offset_x, crop_height, crop_width = random_crop_box(tf.shape(image), height, width,
                                                                  seed=seed, area_range=area_range)
    image = tf.image.crop_to_bounding_box(image, offset_y, offset_x, crop_height, crop_width)
    return tf.image.resize([to_float(image, rgb)], [height, width], method=_BICUBIC)[0]


def random_crop_with_resize(image, height, width, p=1.0, seed=None, rgb=True,
                            area_range=_AREA_RANGE):
    """`crop_and_resize` with probability p (SimCLR always uses p = 1); float32 either way, RGB
    unless `rgb=False`."""
    apply_seed, crop_seed = _split(seed, 2)
    return random_apply(lambda x: crop_and_resize(x, height, width, seed=crop_seed, rgb=rgb,
                                                  area_range=area_range), p=p,
                        x=image, seed=apply_seed, otherwise=lambda x: to_float(x, rgb))


def gaussian_blur(image, kernel_size, sigma, padding='SAME'):
    """Separable, depthwise Gaussian blur of a (H, W, C) or (B, H, W, C) image.

    The kernel has 2r + 1 taps, r = int(kernel_size / 2), weights exp(-x^2 / (2 sigma^2))
    normalised to sum 1; the horizontal pass runs first, 'SAME' pads with zeros.
    """
    image = tf.convert_to_tensor(image)
    # The kernel is computed in float32 and cast to the image's dtype (bfloat16/float16 views
    # under mixed precision), since depthwise_conv2d needs both in one dtype.
    radius = int(kernel_size / 2)
    taps = 2 * radius + 1
    sigma = tf.cast(sigma, tf.float32)
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    weights = tf.exp(-tf.pow(x, 2.0) / (2.0 * tf.pow(sigma, 2.0)))
    weights = tf.cast(weights / tf.reduce_sum(weights), image.dtype)
    channels = tf.shape(image)[-1]
    kernel_h = tf.tile(tf.reshape(weights, [1, taps, 1, 1]), [1, 1, channels, 1])
    kernel_v = tf.tile(tf.reshape(weights, [taps, 1, 1, 1]), [1, 1, channels, 1])
    single = image.shape.rank == 3
    if single:
        image = tf.expand_dims(image, axis=0)
    out = tf.nn.depthwise_conv2d(image, kernel_h, strides=[1, 1, 1, 1], padding=padding)
    out = tf.nn.depthwise_conv2d(out, kernel_v, strides=[1, 1, 1, 1], padding=padding)
    if single:
        out = tf.squeeze(out, axis=0)
    return out


def random_blur(image, height, width, p=1.0, seed=None):
    """With probability p, blurs with sigma ~ U(0.1, 2.0) and kernel_size = height // 10."""
    del width  # The original sizes the kernel from the height only.
    apply_seed, sigma_seed = _split(seed, 2)

    def _transform(x):
        sigma = _uniform(sigma_seed, minval=0.1, maxval=2.0)
        return gaussian_blur(x, kernel_size=height // 10, sigma=sigma, padding='SAME')
    return random_apply(_transform, p=p, x=image, seed=apply_seed)


def batch_random_blur(images_list: Sequence[tf.Tensor], height: int, width: int,
                      blur_probability: float = 0.5, seed=None) -> List[tf.Tensor]:
    """Blurs each view batch (B, H, W, C) with one shared sigma, kept per example w.p. p.

    For every tensor in `images_list`: one sigma ~ U(0.1, 2.0) for the whole batch,
    kernel_size = height // 10, then a per-example Bernoulli(blur_probability) chooses
    the blurred or the original image; the result is clipped to [0, 1]. Views get
    independent draws from sub-seeds of `seed` (one drawn per call if None).
    """
    out = []
    seeds = _split(seed, 2 * len(images_list)) if images_list else []
    for i, images in enumerate(images_list):
        blurred = random_blur(images, height, width, p=1.0, seed=seeds[2 * i])
        keep_blur = tf.less(_uniform(seeds[2 * i + 1], [tf.shape(images)[0], 1, 1, 1]),
                            blur_probability)
        images = tf.where(keep_blur, blurred, images)
        out.append(tf.clip_by_value(images, 0., 1.))
    return out


def random_flip_left_right(image, seed):
    """`tf.image.stateless_random_flip_left_right` of a (H, W, C) image, with the same draw.

    A 1-channel image is reversed as (H, W): TF's reverse of a width axis followed by a size-1
    channel axis moves one float at a time and takes about 8x as long (0.18 ms at 224 px).
    """
    if not is_grey(image):
        return tf.image.stateless_random_flip_left_right(image, seed=seed)
    mirror = tf.less(_uniform(seed), 0.5)
    return tf.cond(mirror,
                   lambda: tf.expand_dims(tf.reverse(tf.squeeze(image, -1), [1]), -1),
                   lambda: image)


def train_view(image, height, width, color_jitter_strength=0., crop=True, flip=True,
               impl='simclrv2', seed: Optional[tf.Tensor] = None,
               crop_min_area: float = _AREA_RANGE[0]):
    """One training view in the image's own channels (a grey view stays (H, W, 1)): random resized
    crop, flip, colour distortion, reshape, clip (the original's `preprocess_for_train` before RGB).

    The input pipeline yields grey views like this and the model tiles them to RGB on the device
    (`model.Model`), so a third of the data is written, batched and copied. `crop_min_area` is the
    random crop's smallest share of the image (the original's 0.08).
    """
    rgb = not is_grey(image)
    # A fixed split, so e.g. the flip does not change when the crop is switched off.
    crop_seed, flip_seed, colour_seed = _split(seed, 3)
    if crop:
        image = random_crop_with_resize(image, height, width, seed=crop_seed, rgb=rgb,
                                        area_range=(crop_min_area, _AREA_RANGE[1]))
    else:
        image = to_float(image, rgb)
    if flip:
        image = random_flip_left_right(image, seed=flip_seed)
    if color_jitter_strength > 0:
        image = random_color_jitter(image, strength=color_jitter_strength, impl=impl,
                                    seed=colour_seed)
    image = tf.reshape(image, [height, width, 3 if rgb else 1])
    return tf.clip_by_value(image, 0., 1.)


def preprocess_views(image, height, width, color_jitter_strength: float,
                     seeds: Sequence[Optional[tf.Tensor]],
                     crop_min_area: float = _AREA_RANGE[0]) -> tf.Tensor:
    """Training views of one image, one per seed, concatenated on channels: (H, W, views) for a
    grey image, (H, W, 3 x views) for RGB.

    View k is `train_view(image, height, width, color_jitter_strength, seed=seeds[k])` (a None
    seed is drawn per view), i.e. `preprocess_for_train`'s view before a grey view's tile.
    """
    return preprocess_image_views([image] * len(seeds), height, width, color_jitter_strength, seeds,
                                  crop_min_area)


def preprocess_image_views(images: Sequence[tf.Tensor], height, width, color_jitter_strength: float,
                           seeds: Sequence[Optional[tf.Tensor]],
                           crop_min_area: float = _AREA_RANGE[0]) -> tf.Tensor:
    """`preprocess_views` with view k taken from images[k] (e.g. two images of one study, as
    `--positive_pairs=study_views` pairs them); the images share their channel count."""
    views = [train_view(image, height, width, color_jitter_strength, seed=seed,
                        crop_min_area=crop_min_area) for image, seed in zip(images, seeds)]
    if is_grey(images[0]):
        return interleave_grey_views(views)
    return tf.concat(views, -1)


def interleave_grey_views(views: Sequence[tf.Tensor]) -> tf.Tensor:
    """(H, W, 1) views (a static H, W) -> (H, W, k), view j in channel j: `tf.concat(views, -1)`.

    One matmul of the (k, H x W) planes with the k x k identity: a channel concat of 1-channel
    views copies one float at a time, about 0.3 ms against 0.1 ms per 224 px pair here. Exact:
    every output is 1 x v plus products with 0 (the views are clipped to [0, 1], so finite), in
    any order (unless oneDNN is told to compute float32 matmuls in a reduced precision,
    ONEDNN_DEFAULT_FPMATH_MODE; tests/test_data_util.py compares with the RGB path bit for bit).
    """
    height, width, _ = views[0].shape
    planes = tf.reshape(tf.stack(views), [len(views), -1])
    return tf.reshape(tf.matmul(planes, tf.eye(len(views)), transpose_a=True),
                      [height, width, len(views)])


def eval_view(image, height, width, crop=True):
    """The eval view in the image's own channels (a grey view stays (H, W, 1)): 0.875 central crop
    + bicubic resize (if crop), reshape, clip (the original's `preprocess_for_eval` before RGB)."""
    rgb = not is_grey(image)
    if crop:
        image = center_crop(image, height, width, crop_proportion=CROP_PROPORTION, rgb=rgb)
    else:
        image = to_float(image, rgb)
    image = tf.reshape(image, [height, width, 3 if rgb else 1])
    return tf.clip_by_value(image, 0., 1.)


def preprocess_view(image, height, width, is_training=False, color_jitter_strength=0.,
                    test_crop=True, seed: Optional[tf.Tensor] = None,
                    crop_min_area: float = _AREA_RANGE[0]):
    """`train_view` when training, else `eval_view` (the original's `preprocess_image` before RGB)."""
    if is_training:
        return train_view(image, height, width, color_jitter_strength, seed=seed,
                          crop_min_area=crop_min_area)
    return eval_view(image, height, width, test_crop)


# ----------------------------------------------------------------------------- the original's names
# google-research/simclr `tf2/data_util.py` entry points, kept as thin aliases of the view family
# above (`train_view`, `eval_view`, `preprocess_view`): the same view, tiled to RGB at the end. The
# input pipeline uses the view family (grey views stay 1-channel until the model); these serve the
# export's serving function, the fidelity checks and callers expecting the original's API.

def preprocess_for_train(image, height, width, color_jitter_strength=0., crop=True,
                         flip=True, impl='simclrv2', seed: Optional[tf.Tensor] = None):
    """`train_view` tiled to RGB: random resized crop, flip, colour distortion, reshape, clip.

    `image` is float32 RGB in [0, 1], or any image `to_float_rgb` converts (e.g. decoded uint8
    grey). With `seed` (shape [2] int32/int64) the view is a pure function of (image, seed); with
    None one seed is drawn per call (see the module docstring).
    """
    return grayscale_to_rgb(train_view(image, height, width, color_jitter_strength, crop, flip,
                                       impl, seed))


def preprocess_for_eval(image, height, width, crop=True):
    """`eval_view` tiled to RGB: 0.875 central crop + bicubic resize (if crop), reshape, clip.

    With `crop=False` (the original uses it when image_size <= 32) the image must already be
    (height, width).
    """
    return grayscale_to_rgb(eval_view(image, height, width, crop))


def preprocess_image(image, height, width, is_training=False, color_jitter_strength=0.,
                     test_crop=True, seed: Optional[tf.Tensor] = None):
    """`preprocess_view` tiled to RGB: float32 in [0, 1] (uint8 scaled by 1/255), augmented.

    Training always uses the random resized crop and flip; `test_crop` only affects eval; `seed`
    (training only) fixes the view, eval is deterministic.
    """
    return grayscale_to_rgb(preprocess_view(image, height, width, is_training,
                                            color_jitter_strength, test_crop, seed))
