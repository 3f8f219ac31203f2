"""Glue to training frameworks, each behind an optional extra (``pip install alrs[lightning]``)."""
