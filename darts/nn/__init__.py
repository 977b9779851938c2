"""The networks: the op zoo (``ops``), the search network with its mixed edges
(``supernet``), the evaluation networks built from a genotype (``evalnet``,
``evalnet_imagenet``), and the plain one-module-per-op formulation (``reference``) that
the tests hold the fast network equal to. ``fast/`` holds the CPU fast paths the
supernet and ops use; nothing in them is science."""
