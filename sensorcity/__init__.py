"""sensorcity: city sensor nodes (MicroPython), their gateway and the bench tools."""

__version__ = "0.1.0"
