"""The passes over the kernel IR, each a module with one job: ``quantize`` (formats), ``memory``
(temporaries share arrays), ``tile`` (lanes), ``schedule`` (the exact RTL schedule) and
``estimate`` (cycles and resources before synthesis). ``fx2fpga.pipeline`` runs them in order."""
