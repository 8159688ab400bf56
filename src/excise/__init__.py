"""excise: machine unlearning with the evidence that the model forgot."""

__version__ = "0.1.0"

# The data package registers every data set and, through them, the task modules (losses, evaluators, target
# splitters), which import `excise.requests` and `excise.metrics` in turn. Importing it first, whatever module
# a user imports first, gives one import order and no partially initialised module.
from excise import data as _data  # noqa: E402, F401
