"""The sweep report (`spurgen report`): every run's eval/metrics.json and .hydra/config.yaml -> report.md,
report.csv, figures.

One table per (method version, class, run identity): the class is its ImageNet index, class file and
component; the identity (spurgen/identity.py) is the resolved config less seed, lambda_sfsl, the target, paths,
logging and keys that cannot change results. Rows are lambda_sfsl, plus a reference and a baseline row, each
with an identity of its own; numbers are the mean over seeds with the seed-to-seed standard deviation and the
number of seeds. Runs of different identities are never counted as seeds of one another: each table names the
config keys in which its runs differ from the other tables. Two runs that should agree (the same row, identity
and seed) but do not are listed, never dropped silently; so are runs that failed or that the sweep planned but
never started. Runs of one identity that started from different base weights (metrics.json "model_weights")
are split into tables of their own.

Per table, classifier and lambda_sfsl > 0, the effect-shown rule (effects.py) compares the row's mean with the
lambda_sfsl = 0 row's against the pooled seed spread, for the spurious rate and the similarity; every line is
listed, shown or not.

Reading runs: collect.py. Tables and their statistics: aggregate.py (names: titles.py). The rule: effects.py.
Output: csv_rows.py (report.csv, effects.csv), markdown.py (report.md), figures.py, wandb_run.py; write.py puts
them together.
"""

from spurgen.report.aggregate import aggregate, table_differences
from spurgen.report.collect import Run, Sweep, collect
from spurgen.report.csv_rows import CSV_FIELDS, EFFECT_FIELDS, csv_lines, effect_lines
from spurgen.report.markdown import markdown
from spurgen.report.titles import table_title
from spurgen.report.wandb_run import push_wandb, training_group
from spurgen.report.write import write_report

__all__ = [
    "CSV_FIELDS",
    "EFFECT_FIELDS",
    "Run",
    "Sweep",
    "aggregate",
    "collect",
    "csv_lines",
    "effect_lines",
    "markdown",
    "push_wandb",
    "table_differences",
    "table_title",
    "training_group",
    "write_report",
]
