"""The ``torchgraft`` command line: one module per subcommand."""
