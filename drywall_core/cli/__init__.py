"""The ``drywall`` command line: one module per command group, each command short -- parse its
options, make one stage call (:mod:`drywall_core.stages`), present the record.

- :mod:`~drywall_core.cli.app`: the typer app, the stage context, exit codes and error lines;
- :mod:`~drywall_core.cli.data`: pull, validate, masks, split, ingest, sample, datasets;
- :mod:`~drywall_core.cli.model`: train, evaluate, predict, model init-tiny / info;
- :mod:`~drywall_core.cli.field`: drift, label-queue;
- :mod:`~drywall_core.cli.registry`: registry list / show / pull / promote / publish / evaluate / ...
- :mod:`~drywall_core.cli.serve`: serve (the prediction service), api-key new / hash;

The installed ``drywall`` (``deployments.cli``) adds the commands that wire orchestration in.
"""

from drywall_core.cli import data, field, model, registry, serve  # noqa: F401 - each registers its commands
from drywall_core.cli.app import app, classify, context, err, run


def main() -> None:
    """The domain commands alone; the installed ``drywall`` adds the orchestration ones (deployments.cli)."""
    run(app)


__all__ = ["app", "classify", "context", "err", "main", "run"]
