"""The daemon's work beside the event pipeline: its one APScheduler (``scheduler``), the
housekeeping jobs one module each (``pools``, ``orphans``, ``policy``, ``windows``, ``stale``,
registered by ``periodic``), manual remediation requests (``manual``), and systemd's notify
protocol, status rounds and watchdog (``systemd``)."""
