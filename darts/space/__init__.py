"""The search space S of the paper: op names and cell topology (``primitives``), Π_S, the
projection onto S that derives a genotype from α (``projection``), and the genotypes
published with DARTS and its successors (``published``)."""
