"""The Wordybird experiments on the Hugging Face Trainer (the ``[train]`` extra).

Importing this package changes nothing in the process (no environment variables): runs
switch the Hugging Face libraries offline only while they work (:mod:`.offline`).
"""
