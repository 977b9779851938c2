"""CPU fast paths, the same arithmetic arranged differently: several edges' ops as one
wider op (``edgebatch``), depthwise convolutions with a fast backward (``depthwise``),
device-to-host copies that do not stall (``hostcopy``), and reuse of freed host memory
(``hostmemory``). Tests pin each to the plain formulation in ``darts.nn.reference``."""
