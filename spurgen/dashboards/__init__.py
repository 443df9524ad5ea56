"""W&B dashboards for comparing a sweep's runs, as code.

One definition, spurgen's own panel specification (spec.py: plain dataclasses that read and write JSON), is
built from a sweep (plan.py, source.py) and turned into both W&B objects with wandb-workspaces
(wandb_objects.py): a saved workspace view and a report. command.py is `spurgen dashboard`. charts.py is the
W&B custom chart (a Vega-Lite chart preset) that draws a metric vs lambda_sfsl with the baseline and reference
rows as horizontal lines, which no built-in W&B panel can.

Offline serialisation: a wandb-workspaces report whose runsets name an entity and project cannot be
serialised offline (it looks the project up on the server). spurgen therefore keeps its own panel spec as the
offline form: `--dry-run`, or any run without W&B credentials or network, writes that spec (dashboard.json,
next to the sweep report), and `spurgen dashboard dashboard.json` creates the workspace and report from it
later. The W&B objects are built only from the spec, so the JSON holds everything they contain.
"""

from spurgen.dashboards.spec import SPEC_FILE, DashboardSpec

__all__ = ["SPEC_FILE", "DashboardSpec"]
