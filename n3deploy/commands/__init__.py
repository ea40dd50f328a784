"""Sub-commands of the ``n3deploy`` command line (see :mod:`n3deploy.cli`)."""
