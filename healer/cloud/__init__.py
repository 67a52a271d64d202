"""The cloud boundary the core owns: the provider protocol, the records that cross it, the
infrastructure specs, and the registry that loads a plugin by name.

Plugins (the ``providers`` package) implement these; nothing here imports a cloud library.
"""
