"""`python -m cvtool` (used by torchrun: `torchrun --nproc_per_node=N -m cvtool train hardware=ddp`)."""

from cvtool.cli.app import main

main()
