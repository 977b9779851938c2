"""The training loops and what they record: the bilevel search (``search``), retraining
and evaluation (``train``), the search record (``history``), atomic checkpoints keyed by
configuration (``checkpoint``), BatchNorm statistics re-estimated before a supernet is
scored (``batchnorm``), and timing a few real steps for cost estimates
(``steptime``)."""
