"""The methods and their plug-ins: the written interfaces (``interfaces``), the method
registry (``registry``), activations of α (softmax, CRB, sigmoid), α-step schedules
(alternate, CS10, FIMT), regularizers toward S (PR, ADMM, zero-one), second-order DARTS
(``unrolled``), and the methods that set α without a search (``sampling``: random
sampling from S; ``fixed_genotype``: a given genotype)."""
