"""Tests for simclr_mura.study_pairs and `--positive_pairs=study_views`: the pairing rules, the
input pipeline on the tiny dataset, NT-Xent on a batch of study pairs, a real pretraining run."""
import numpy as np
import pytest
import tensorflow as tf

import tiny_mura
import tiny_runs
from simclr_mura import data
from simclr_mura import main
from simclr_mura import recipes
from simclr_mura import study_pairs
from simclr_mura.config import ConfigError, validate

SIZES = np.array([1, 2, 3, 5, 1, 4, 2, 2, 3, 1, 5])


def _study_of_row(sizes):
    return np.repeat(np.arange(len(sizes)), sizes)


@pytest.mark.parametrize('batch', [1, 4])
def test_each_study_once_per_epoch_as_two_of_its_views(batch):
    study = _study_of_row(SIZES)
    for epoch in range(20):
        pairs = study_pairs.plan_epoch(SIZES, seed=3, epoch=epoch, pipeline_batch=batch)
        assert len(pairs) == len(SIZES) - len(SIZES) % batch
        assert (study[pairs[:, 0]] == study[pairs[:, 1]]).all()  # both views of one study
        assert len(set(study[pairs[:, 0]])) == len(pairs)  # each study at most once
        several = SIZES[study[pairs[:, 0]]] > 1
        assert (pairs[several, 0] != pairs[several, 1]).all()  # two different views
        assert (pairs[~several, 0] == pairs[~several, 1]).all()  # a one-view study: its image twice
        if batch == 1:
            assert sorted(study[pairs[:, 0]]) == list(range(len(SIZES)))  # every study visited


def test_plan_is_fixed_by_seed_and_epoch_and_draws_every_view():
    a = study_pairs.plan_epoch(SIZES, seed=3, epoch=0, pipeline_batch=1)
    np.testing.assert_array_equal(a, study_pairs.plan_epoch(SIZES, seed=3, epoch=0, pipeline_batch=1))
    assert not np.array_equal(a, study_pairs.plan_epoch(SIZES, seed=3, epoch=1, pipeline_batch=1))
    assert not np.array_equal(a, study_pairs.plan_epoch(SIZES, seed=4, epoch=0, pipeline_batch=1))
    # Over epochs every ordered pair of different views of a 3-view study is drawn.
    starts = np.concatenate([[0], np.cumsum(SIZES)[:-1]])
    seen = set()
    for epoch in range(200):
        for first, second in study_pairs.plan_epoch(SIZES, seed=3, epoch=epoch, pipeline_batch=1):
            if starts[2] <= first < starts[2] + 3:
                seen.add((first - starts[2], second - starts[2]))
    assert seen == {(i, j) for i in range(3) for j in range(3) if i != j}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tiny_mura.build(str(tmp_path_factory.getbasetemp() / 'tiny_mura'))


@pytest.fixture(scope='module')
def builder(data_dir):
    return data.make_builder(tiny_mura.DATASET, data_dir)


def test_studies_are_dealt_to_pipelines_whole(builder):
    index = data.split_index(builder, 'train')
    views = index.groupby('study_id').size()
    assert (views > 1).any() and (views == 1).any()  # the tiny split has both kinds
    tables = [study_pairs.read_studies(builder, 'train', i, 2) for i in range(2)]
    studies = [set(s.decode() for s in t.study_ids) for t in tables]
    assert not studies[0] & studies[1] and studies[0] | studies[1] == set(views.index)
    for table in tables:
        ids = [i.decode() for i in table.image_ids]
        assert len(ids) == sum(views[s.decode()] for s in table.study_ids) == len(table.images)
        # Rows of study s are starts[s] .. starts[s] + sizes[s] - 1.
        by_image = index.set_index('image_id')['study_id']
        for s, start, size in zip(table.study_ids, table.starts, table.sizes):
            assert {by_image[i] for i in ids[start:start + size]} == {s.decode()}


def test_pairs_dataset_gives_views_of_one_study_and_no_study_twice_in_a_batch(builder):
    index = data.split_index(builder, 'train').set_index('image_id')
    batch = 4
    table = study_pairs.read_studies(builder, 'train')
    per_epoch = len(table.sizes) - len(table.sizes) % batch
    assert len(table.sizes) % batch  # an epoch's partial batch is dropped
    pairs = list(study_pairs.pairs_dataset(table, 5, batch).take(3 * per_epoch).as_numpy_iterator())
    image_of = dict(zip(table.images, (i.decode() for i in table.image_ids)))
    for start in range(0, len(pairs) - batch + 1, batch):
        studies = []
        for pair in pairs[start:start + batch]:
            first, second = image_of[pair['image']], image_of[pair['partner']]
            assert pair['image_id'].decode() == first
            assert index.loc[first, 'study_id'] == index.loc[second, 'study_id']
            assert pair['label'] == index.loc[first, 'label']
            studies.append(index.loc[first, 'study_id'])
        assert len(set(studies)) == batch
    first_epoch = [image_of[p['image']] for p in pairs[:per_epoch]]
    assert len({index.loc[i, 'study_id'] for i in first_epoch}) == per_epoch


def test_too_few_studies_for_the_batch_is_one_clear_error(builder):
    table = study_pairs.read_studies(builder, 'train')
    with pytest.raises(ValueError, match='fewer than its batch'):
        study_pairs.pairs_dataset(table, 0, len(table.sizes) + 1)


def test_study_views_only_for_pretraining():
    config = tiny_runs.base_config('D', 'M', train_mode='finetune', checkpoint='C',
                                   positive_pairs='study_views')
    with pytest.raises(ConfigError, match='--positive_pairs=study_views chooses the pairs'):
        validate(config)


def _nt_xent(z, temperature):
    """Both directions of NT-Xent on projections z = [view 1 rows; view 2 rows] (numpy)."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z) // 2
    sim = z @ z.T / temperature
    np.fill_diagonal(sim, -np.inf)
    positive = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    log_softmax = sim - np.log(np.exp(sim).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(2 * n), positive].mean() * 2


def test_loss_on_a_batch_of_study_pairs_is_nt_xent_by_hand(builder):
    config = tiny_runs.base_config('D', 'M', train_mode='pretrain', positive_pairs='study_views',
                                   temperature=0.5, seed=2, lineareval_while_pretraining=False,
                                   class_weighting='none', use_blur=False)
    recipe = recipes.for_config(config)
    input_fn = data.build_input_fn(builder, 'train', 8, is_training=True, image_size=64,
                                   deterministic=True, seed=2, **recipe.train_input().as_kwargs())
    images, targets = next(iter(input_fn(tf.distribute.InputContext())))
    assert images.shape == (8, 64, 64, 2)  # two grey views on channels
    model = recipe.build_model(2)
    loss, stats = recipe.compute_loss(model, images, targets, strategy=tf.distribute.get_strategy())
    projections, _ = model(images, training=True)
    # The model stacks view 1 of the batch, then view 2 (the original's split on channels).
    expected = _nt_xent(projections.numpy().astype(np.float64), 0.5)
    np.testing.assert_allclose(stats['train/contrast_loss'].numpy(), expected, rtol=1e-4)
    assert loss.numpy() >= stats['train/contrast_loss'].numpy()


@pytest.mark.slow
def test_pretraining_with_study_views_runs_and_resumes_its_pairs(data_dir, builder, tmp_path):
    config = tiny_runs.base_config(data_dir, str(tmp_path / 'micle'), train_mode='pretrain',
                                   positive_pairs='study_views', train_steps=3, checkpoint_steps=1,
                                   mode='train', seed=4)
    result = main.run(config, strategy=tiny_runs.strategy(1))
    assert result.final_step == 3
    # The input a resumed run reads from step 2 on is what the uninterrupted one read there.
    recipe = recipes.for_config(config)

    def batches(resume_step, count):
        fn = data.build_input_fn(builder, 'train', 8, is_training=True, image_size=64,
                                 deterministic=True, seed=4, resume_step=resume_step,
                                 **recipe.train_input().as_kwargs())
        return [b[1]['key'].numpy() for b in fn(tf.distribute.InputContext()).take(count)]

    whole, resumed = batches(0, 4), batches(2, 2)
    for a, b in zip(whole[2:], resumed):
        np.testing.assert_array_equal(a, b)
