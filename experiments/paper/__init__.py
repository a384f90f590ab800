"""The paper's tables and pages (experiments/results/paper/): Table 1's and
Table 2's settings, training and pages, the sweep report and where each page
came from (provenance). `python -m experiments.paper` writes the pages."""
