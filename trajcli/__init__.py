"""trajcli: analyse the optimization trajectory stored in a folder of checkpoints."""

__version__ = "0.1.0"
