"""`python -m gateway` is the `inference-gateway` command."""

from gateway.cli import main

main()
