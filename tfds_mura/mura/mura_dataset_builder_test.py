"""DatasetBuilderTestCase for `mura` on dummy_data/ (a mini MURA-v1.1 with quirks).

dummy_data/MURA-v1.1 holds 17 listed images: train patients 1-5, 9 (patient00001 recurs
under XR_ELBOW and XR_HAND), valid patients 10-12, one RGB PNG (hand patient00004
image2), a `._image1.png` sidecar and two `.DS_Store` files that must be ignored.
Patients 5 and 9 hash into `validation`. The label fractions are tiny here, so both
consist of the first normal patient (00002) and the first abnormal patient (00001) in
the salted-hash order: the both-labels guarantee of mura_splits.select_patients.
"""
import tensorflow_datasets as tfds

from tfds_mura.mura import mura_dataset_builder

_FRACTIONS = ['train_10pct', 'train_1pct']  # subsets of train, so they overlap it


class MuraAllTest(tfds.testing.DatasetBuilderTestCase):
    """`mura/all`: elbow + hand."""
    DATASET_CLASS = mura_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['all']
    OVERLAPPING_SPLITS = _FRACTIONS
    # train: p1 (2 elbow + 1 hand), p2 (1), p3 (3), p4 (3 hand); validation: p5 (1), p9 (2);
    # test: p10 (2), p11 (1), p12 (1); fractions: p1 + p2.
    SPLITS = {'train': 10, 'validation': 3, 'test': 4, 'train_10pct': 4, 'train_1pct': 4}


class MuraElbowTest(tfds.testing.DatasetBuilderTestCase):
    """`mura/elbow`: only XR_ELBOW rows."""
    DATASET_CLASS = mura_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['elbow']
    OVERLAPPING_SPLITS = _FRACTIONS
    # train: p1 (2), p2 (1), p3 (3); validation: p5 (1); test: p10 (2); fractions: p1 + p2.
    SPLITS = {'train': 6, 'validation': 1, 'test': 2, 'train_10pct': 3, 'train_1pct': 3}


class MuraHandTest(tfds.testing.DatasetBuilderTestCase):
    """`mura/hand`: the RGB image and the recurring patient id."""
    DATASET_CLASS = mura_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = ['hand']
    OVERLAPPING_SPLITS = _FRACTIONS
    # train: p1 (1), p4 (3); validation: p9 (2); test: p11 (1), p12 (1); fractions: p4 + p1.
    SPLITS = {'train': 4, 'validation': 2, 'test': 2, 'train_10pct': 4, 'train_1pct': 4}


if __name__ == '__main__':
    tfds.testing.test_main()
