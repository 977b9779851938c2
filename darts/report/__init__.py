"""From per-run metrics to results: Table 1 (``table``), Welch intervals (``stats``), the
paper's claims tested (``claims``), and the figures (``figures``: per run;
``figures_study``: per study; ``figures_compare``: differences against reference rows).
Pure functions of data: nothing here trains."""
