"""The cloud boundary the core owns: the provider protocol, the records that cross it, the
infrastructure specs, one rule set per infrastructure resource (``diff``, shared by ``plan`` and
the plugins), and the registry that loads a plugin by name.

Plugins (the ``providers`` package) implement these; nothing here imports a cloud library.
"""
