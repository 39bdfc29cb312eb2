"""The training input of a seeded run resumes bit for bit: same examples, same augmentations.

Each element's augmentation seed comes from its position in the stream (`data._with_position_seeds`),
so the parallel map is a pure function and a pipeline restarted with `resume_step` yields exactly
the batches the uninterrupted pipeline yields from that step on. (The whole-run check, final
weights of a killed and resumed run equal to an uninterrupted one's, is in test_kill_resume.py.)
"""
import numpy as np
import pytest
import tensorflow as tf

import tiny_mura
from simclr_mura import data

pytestmark = pytest.mark.reliability


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
    data_dir = tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))
    return data.make_builder(tiny_mura.DATASET, data_dir)


def _batches(builder, resume_step, count, pipelines=1, pipeline_id=0):
    input_fn = data.build_input_fn(builder, 'train', 4 * pipelines, is_training=True, is_pretrain=True,
                                   image_size=32, color_jitter_strength=1.0, deterministic=True, seed=7,
                                   resume_step=resume_step)
    context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=pipelines)
    iterator = iter(input_fn(context))
    return [next(iterator) for _ in range(count)]


def _same(a, b):
    return (np.array_equal(a[0].numpy(), b[0].numpy())
            and np.array_equal(a[1]['key'].numpy(), b[1]['key'].numpy()))


def test_resumed_stream_equals_the_uninterrupted_one_bit_for_bit(builder):
    uninterrupted = _batches(builder, 0, 6)
    # Crosses the end of the 38-image epoch (step 9.5), where the shuffle reshuffles.
    resumed = _batches(builder, 3, 3)
    assert all(_same(a, b) for a, b in zip(uninterrupted[3:], resumed))
    assert all(_same(a, b) for a, b in zip(uninterrupted, _batches(builder, 0, 6)))
    # The two views of an image differ: the position seed is split per view.
    images = uninterrupted[0][0].numpy()
    assert not np.array_equal(images[..., :3], images[..., 3:])


def test_position_seeds_differ_between_input_pipelines_and_positions():
    def seeds(pipeline_id):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        # pylint: disable-next=protected-access
        dataset = data._with_position_seeds(tf.data.Dataset.range(3), 7, context)
        return [seed.numpy().tolist() for _, seed in dataset]
    # Pipeline p's element i gets (seed, 2i + p): no two elements anywhere share a seed.
    assert seeds(0) == [[7, 0], [7, 2], [7, 4]]
    assert seeds(1) == [[7, 1], [7, 3], [7, 5]]
