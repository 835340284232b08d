"""Command-line interface (Typer). Imports no torch at module level so --help stays fast."""
