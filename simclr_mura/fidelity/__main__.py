"""`python -m simclr_mura.fidelity FIXTURE_DIR`: see `checks`."""
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # Before TensorFlow is imported.

from simclr_mura.fidelity import checks  # noqa: E402

sys.exit(checks.main())
