"""excise: machine unlearning with the evidence that the model forgot.

Importing the package imports nothing else: the command line starts without torch, and every module can be the
first one imported (task plug-ins are loaded when a task is first needed, :func:`excise.data.base.load_task`).
"""

__version__ = "0.1.0"
