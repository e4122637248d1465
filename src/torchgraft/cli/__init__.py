"""The ``torchgraft`` command line: one module per subcommand (``demo``, ``train``, ``predict``, ``export``,
``lr_find``, ``inspect``), each with ``add_parser`` and ``run``; :mod:`torchgraft.cli.main` dispatches.

Nothing is re-exported here: the command line is used as ``torchgraft ...`` or ``torchgraft.cli.main.main``.
"""

__all__: list[str] = []
