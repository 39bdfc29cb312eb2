"""SimCLR on MURA: the training and evaluation entry point (flags as google-research/simclr tf2/run.py).

Examples:
  python run.py --flagfile=flags/demo_pretrain.cfg
  python run.py --flagfile=flags/baseline_elbow_paper.cfg   # DenseNet-169 baseline, the MURA paper's recipe
  python run.py --mode=train_then_eval --train_mode=pretrain --dataset=mura/elbow \\
      --model_dir=runs/elbow_pretrain --resnet_depth=50 --train_batch_size=256

Run `python run.py --helpfull` for every flag. Bad settings stop the run at start, one line each.
"""
import sys

from absl import app
from absl import logging

from simclr_mura import flags_def
from simclr_mura import main as main_lib
from simclr_mura.config import ConfigError

flags_def.define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    config = flags_def.config_from_flags()
    try:
        main_lib.run(config)
    except ConfigError as e:
        for line in str(e).splitlines():
            sys.stderr.write(f'run.py: error: {line}\n')
        sys.exit(2)
    logging.info('Done.')


if __name__ == '__main__':
    app.run(main)
