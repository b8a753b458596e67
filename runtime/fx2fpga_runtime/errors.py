"""The runtime's errors: each names what went wrong, where, and what would work.

Every error a ``KernelRunner`` raises on purpose is a ``KernelError``; each kind also subclasses the
builtin that callers caught before it existed (``ValueError`` for bad input, ``KeyError`` for parameter
names, ``RuntimeError`` for a call the kernel cannot serve), so ``except ValueError`` keeps working.
fx2fpga re-exports them: ``from fx2fpga.errors import KernelError``.
"""

from __future__ import annotations


class KernelError(Exception):
    """Base class of every error the runtime raises on purpose."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()  # (KeyError would quote it)


class KernelInputError(KernelError, ValueError):
    """An array given to a kernel call that it cannot take: the wrong number of arrays, a shape other than
    the compiled one, a dtype that is not real numbers, NaN or Inf, a class index out of range."""


class KernelParamError(KernelInputError, KeyError):
    """``set_params`` with a name the kernel does not have, or without a parameter it must have."""


class KernelClosedError(KernelError, RuntimeError):
    """A call to a runner after ``close()`` (or after its ``with`` block)."""


class KernelCapabilityError(KernelError, RuntimeError):
    """A call the kernel was not compiled for (``train_step`` on an inference kernel, ``set_lr`` without a
    learning rate register)."""


class KernelBackendError(KernelError, RuntimeError):
    """A backend answered a command with the wrong number of words."""
