"""Every function that computes a result and publishes an output folder, with the run protocol
(:mod:`vlmsteer.runs.protocol`: identity, fingerprint, lock, staging, ``overwrite``,
``run.json``): the CLI and the Python API call the same functions and write the same folders.

>>> from vlmsteer.runs.concepts import concepts
>>> concepts("runs/store", "runs/concepts", k=8, no_words=True)  # doctest: +SKIP
"""
