"""The command groups of ``stem``, one module each."""
