"""``python -m excise``: the same command line as the ``excise`` script."""

from excise.cli import app

app(prog_name="excise")
