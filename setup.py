"""simclr-mura: a faithful TF2 port of SimCLR applied to the MURA radiograph dataset."""
import setuptools

INSTALL_REQUIRES = [
    # 2.20 is the newest tensorflow-tpu; 2.21 is the newest CPU/GPU release tested here.
    'tensorflow>=2.20,<2.22',
    # Keras 2 API, imported explicitly as `tf_keras` (the code never relies on TF_USE_LEGACY_KERAS).
    'tf-keras>=2.20,<2.22',
    'tensorflow-datasets>=4.9,<4.10',
    # tensorflow-datasets 4.9.10 imports importlib_resources without declaring it (upstream bug).
    'importlib_resources',
    # TF >= 2.16 no longer pulls in tensorboard, but tf.summary.image needs it.
    'tensorboard>=2.20,<2.22',
    'absl-py',
    'numpy',
    'pandas',
    'scikit-learn',
    'matplotlib',
    'Pillow',
]

setuptools.setup(
    name='simclr-mura',
    version='0.1.0',
    description='SimCLR (TF2 port of google-research/simclr) and a DenseNet-169 baseline on MURA',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['simclr_mura', 'simclr_mura.*', 'tfds_mura', 'tfds_mura.*']),
    package_data={'tfds_mura': ['mura/*.md', 'mura/*.bib', 'mura/*.txt', 'mura/*.tsv', 'mura/dummy_data/**/*',
                                'mura/dummy_data/**/.*']},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist', 'dill'],  # tfds.testing imports dill
        'gpu': ['tensorflow[and-cuda]>=2.20,<2.22'],
        # The `tfds build` CLI needs these (about 400 MB); `python -m tfds_mura.build` does not.
        'tfds-cli': ['apache-beam', 'mlcroissant'],
    },
)
