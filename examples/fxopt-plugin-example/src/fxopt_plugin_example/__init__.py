"""An example fxopt plugin: see plugin.py for the hooks."""
