"""The `mura` TFDS dataset (MURA-v1.1, manual download); importing it registers the builder."""
from tfds_mura.mura.mura_dataset_builder import Builder
from tfds_mura.mura.mura_source import MuraDataError

__all__ = ['Builder', 'MuraDataError']
