"""Fidelity checks of this port against numbers produced by the original SimCLR TF2 code:
`python -m simclr_mura.fidelity FIXTURE_DIR` (see `checks`). `compare` is the one comparison,
`checks` the loss, optimizer, schedule and augmentation checks and the command line,
`model_checks` the checkpoint-manifest and forward-pass checks."""
