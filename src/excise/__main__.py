"""``python -m excise``: the same command line as the ``excise`` script."""

from excise.cli import app

if __name__ == "__main__":
    app(prog_name="excise")
