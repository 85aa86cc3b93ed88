"""``python -m vlmsteer`` (and ``torchrun --nproc_per_node N -m vlmsteer extract ...``)."""

from vlmsteer.cli import entry

entry()
