"""``python -m gridtool`` runs the CLI."""

from gridtool.cli.main import main

main()
