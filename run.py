"""SimCLR on MURA: the training and evaluation entry point (flags as google-research/simclr tf2/run.py).

Examples:
  python run.py --flagfile=flags/demo_pretrain.cfg
  python run.py --flagfile=flags/baseline_elbow_paper.cfg   # DenseNet-169 baseline, the MURA paper's recipe
  python run.py --mode=train_then_eval --train_mode=pretrain --dataset=mura/elbow \\
      --model_dir=runs/elbow_pretrain --resnet_depth=50 --train_batch_size=256

Run `python run.py --helpfull` for every flag. Bad flags and settings stop the run at start with one
`run.py: error:` line each and exit code 2; a run stopped by SIGTERM saves a checkpoint and exits
with 143, a failed checkpoint write or a lost worker of a multi-worker run with 1
(docs/reliability.md). TensorFlow's C++ start-up notices are filtered unless TF_CPP_MIN_LOG_LEVEL
is set (simclr_mura/tf_env.py).
"""
import sys

from simclr_mura import tf_env

tf_env.import_tensorflow()  # Before the imports below import it with its start-up notices.

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging

from simclr_mura import checkpoints
from simclr_mura import flags_def
from simclr_mura import main as main_lib
from simclr_mura import preemption
from simclr_mura.config import ConfigError

flags_def.define_flags()


def _error(message: str, exit_code: int):
    for line in str(message).strip().splitlines():
        sys.stderr.write(f'run.py: error: {line}\n')
    sys.exit(exit_code)


def parse_flags(argv):
    """absl's parsing, with one error line (not two, nor a usage dump) for a bad flag or flagfile."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e).removeprefix('ERROR:: ')
        if message.startswith('Unknown command line flag'):
            # "Unknown command line flag 'x'. Did you mean: y ?" -> say where to look, keep the hint.
            unknown, _, hint = message.partition('. Did you mean: ')
            message = f'{unknown} (on the command line or in a --flagfile)'
            if hint:
                message += f'; did you mean --{hint.rstrip(" ?")}?'
        _error(f'{message}; see python run.py --helpfull', 2)
    except OSError as e:  # An unreadable --flagfile.
        _error(f'cannot read a flag file: {e}', 2)
    return None


def main(argv):
    if len(argv) > 1:
        _error(f'unexpected arguments: {" ".join(argv[1:])} (flags are --name=value)', 2)
    config = flags_def.config_from_flags()
    try:
        main_lib.run(config)
    except ConfigError as e:
        _error(str(e), 2)
    except preemption.Preempted as e:
        _error(str(e), preemption.EXIT_CODE)
    except (checkpoints.CheckpointWriteError, main_lib.WorkerLostError) as e:
        _error(str(e), 1)
    logging.info('Done.')


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
