"""excise: machine unlearning with the evidence that the model forgot."""

__version__ = "0.1.0"
