"""A model file for the command line tests that run Yosys: Linear(8, 4) + sigmoid, inference, 4 lanes.

Small enough for the pip YoWASP Yosys (a minute of synth_xilinx on one core, against about 9 minutes for the
digits MLP training kernel), and it still has both kinds of multiplier the RTL builds: the shared MAC pool
(the linear layer) and a function table's interpolation (the sigmoid). Seeded: every compile writes the same
RTL, so the tests that report it share one synthesis through the build cache.
"""

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 4), nn.Sigmoid())
example_inputs = (torch.rand(2, 8),)
