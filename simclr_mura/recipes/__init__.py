"""Training recipes behind one seam (`base.Recipe`), chosen once from the Config's `train_mode`.

Adding a recipe: a new module with a `base.Recipe` subclass and one line in `RECIPES` (plus its
name in `config.TRAIN_MODES`, which the flags and the settings checks read).
"""
from typing import Dict, Type

from simclr_mura.config import Config, ConfigError
from simclr_mura.recipes.base import EpochHook, Recipe, TrainInput  # noqa: F401
from simclr_mura.recipes.baseline import Baseline
from simclr_mura.recipes.simclr import SimCLR

RECIPES: Dict[str, Type[Recipe]] = {
    'pretrain': SimCLR,
    'finetune': SimCLR,
    'baseline': Baseline,
}


def for_config(config: Config) -> Recipe:
    """The recipe of `config.train_mode`."""
    try:
        recipe_class = RECIPES[config.train_mode]
    except KeyError:
        raise ConfigError(f'--train_mode={config.train_mode} has no recipe; use one of '
                          f'{", ".join(RECIPES)}') from None
    return recipe_class(config)
