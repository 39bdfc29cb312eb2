"""TFDS builder `mura` for MURA-v1.1, a synthetic MURA generator and a build CLI.

Importing this package registers the builder, so that
``import tfds_mura; tfds.load('mura/elbow', data_dir=...)`` works.
"""
from tfds_mura.mura import Builder
from tfds_mura.mura import MuraDataError

__all__ = ['Builder', 'MuraDataError']
