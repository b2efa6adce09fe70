"""The ``chat`` command: the Typer app and its sub-commands, shell completion, progress bars.
Errors become one line and an exit code here.
"""
