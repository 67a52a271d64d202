"""Cloud provider plugins: the only package that imports apache-libcloud.

Each plugin fulfils :class:`healer.cloud.machines.Provider` and is registered in the
``healer.providers`` entry-point group (see ``pyproject.toml``); the daemon loads it by name
through :func:`healer.cloud.registry.load_provider`. healer imports nothing from here.
"""
