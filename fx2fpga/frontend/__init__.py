"""The front end: the user's model, the optimizers, and tracing to torch.fx graphs of core ATen ops."""

from .modules import PointModule, _as_tuple, as_module, check_modules
from .optim import GD, SGD, Adam, AdamW, sgd_update
from .trace import trace, trace_inference, trace_training

__all__ = ["GD", "Adam", "AdamW", "PointModule", "SGD", "_as_tuple", "as_module", "check_modules", "sgd_update",
           "trace", "trace_inference", "trace_training"]
