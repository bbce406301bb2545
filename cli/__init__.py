"""The ``paas`` command."""
