"""The ``mpcore`` command line (click): the group in :mod:`mpcore.cli.main`, one module per command group.

Nothing in mpcore imports this package."""
