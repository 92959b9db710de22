"""Getting crystal structures and their properties into one typed table.

Three sources feed the same table (``matdisc.io.schemas.STRUCTURES``):
``snapshot`` (real Materials Project data shipped in a PyPI sdist), ``mp`` (the live
Materials Project API) and ``local`` (the user's CIFs or table). Nothing downstream knows
which one was used, except the provenance column ``source``.
"""
