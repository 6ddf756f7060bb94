"""One module per CLI command (litgpt style): the command a user types names the file.

A command module exposes ``register(app)``; :mod:`mbias.cli` discovers them. Modules import heavy
libraries (torch, transformers) inside their functions so ``mbias --help`` stays fast.
"""
