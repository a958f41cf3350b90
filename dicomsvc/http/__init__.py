"""The HTTP layer: request parsing, uploads, STOW-RS, resources, OpenAPI.

The only code in the package that imports Starlette or python-multipart. Handlers
in ``app.py`` read a request, call one function here, and return.
"""
