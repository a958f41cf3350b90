"""Where data rests: the database (all SQL lives in this package), blobs and upload spools.

``sqlite`` opens the database and owns its schema (``schema.sql``, package data);
``instances`` and ``jobs`` are short query functions returning plain data; ``blobs``
and ``spool`` are files. A second backend (PostgreSQL, S3-compatible objects) becomes
a sibling module here behind the same functions.
"""
