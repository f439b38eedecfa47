"""Run aimactl as ``python -m aimactl``."""
from aimactl.cli.app import main

main()
