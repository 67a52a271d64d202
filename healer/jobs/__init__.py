"""The daemon's long-running jobs beside the event pipeline: periodic work on the scheduler,
manual remediation requests, and the systemd notify/watchdog loop."""
