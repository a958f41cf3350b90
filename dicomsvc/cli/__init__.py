"""The ``dicomsvc`` command line: ``serve`` and the bulk ``import`` client."""
