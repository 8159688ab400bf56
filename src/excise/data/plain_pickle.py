"""Reading pickles that should hold only plain data and numpy arrays (CIFAR batches, Animal-MNIST's arrays).

A pickle names callables that the loader runs, so a file a user was handed could run any code when read. This
unpickler rebuilds dicts, lists, strings, numbers and numeric numpy arrays (numpy 1 or 2, any protocol, Python 2
or 3 writer) and refuses everything else by name:

- every global outside :data:`ALLOWED_GLOBALS` is refused;
- ``numpy.ndarray`` is handed out as a stand-in that only ``_reconstruct`` accepts, so a pickle cannot call the
  array constructor on bytes of its own (an object array built from raw bytes holds pointers the file chose);
- every dtype, when made and again after a ``BUILD`` sets its state, must not hold Python objects, and an array's
  state must name such a dtype: an object array is refused before it exists.

The pure-Python unpickler is used because its ``BUILD`` step can be checked; the files it reads are a few large
byte strings, so it is not slower in practice.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    # Protocol 2 writes an empty bytes value as a call of bytes() (a Python 3 re-pickle of a batch with
    # batch_label=b'', or of an empty array, was refused as unsafe: an outside audit). It builds bytes, nothing else.
    ("__builtin__", "bytes"),
    ("builtins", "bytes"),
})


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle that names code to run, or builds objects from raw pointers: refused for safety, not reported as a
    damaged file."""


class _ArrayClass:
    """What ``numpy.ndarray`` resolves to: a token only :func:`_reconstruct` accepts."""


def _plain_dtype(what: str) -> Any:
    def make(*args: Any, **kwargs: Any) -> np.dtype:
        dtype = np.dtype(*args, **kwargs)
        _check_dtype(dtype, what)
        return dtype

    return make


def _check_dtype(dtype: Any, what: str) -> None:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise RefusedGlobal(f"refusing to load an array of dtype {dtype!r}: {what} only holds plain data and numeric "
                            "numpy arrays (an object array is built from pointers the file chose)")


def _numpy_function(module: str, name: str) -> Any:
    module = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") and hasattr(np, "_core") \
        else module
    return getattr(__import__(module, fromlist=[name]), name)


class _PlainUnpickler(pickle._Unpickler):
    def __init__(self, raw: bytes, what: str, encoding: str) -> None:
        super().__init__(io.BytesIO(raw), encoding=encoding)
        self.what = what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise RefusedGlobal(f"refusing to load {module}.{name}: {self.what} only holds plain data and numpy "
                                "arrays")
        if (module, name) == ("numpy", "ndarray"):
            return _ArrayClass
        if (module, name) == ("numpy", "dtype"):
            return _plain_dtype(self.what)
        if name == "bytes":
            return bytes
        function = _numpy_function(module, name)
        what = self.what
        if name == "_reconstruct":
            def reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
                if cls is not _ArrayClass:
                    raise RefusedGlobal(f"refusing to rebuild a {cls!r}: {what} only holds numpy arrays")
                return function(np.ndarray, shape, dtype)
            return reconstruct

        def checked(*args: Any) -> Any:
            for arg in args:
                if isinstance(arg, np.dtype):
                    _check_dtype(arg, what)
            return function(*args)
        return checked

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.ndarray):
            dtype = state[2] if isinstance(state, tuple) and len(state) >= 3 else None
            _check_dtype(dtype, self.what)
        super().load_build()
        if isinstance(inst, np.dtype):
            _check_dtype(inst, self.what)  # a dtype's state can turn it into one that holds objects

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def load_plain_pickle(raw: bytes, what: str, *, encoding: str = "ASCII") -> Any:
    """Unpickle ``raw`` allowing only plain data and numeric numpy arrays; ``what`` names the file kind in the
    refusal."""
    return _PlainUnpickler(raw, what, encoding).load()
