"""The composition root: :mod:`.daemon` builds every part from the configuration and runs them
in one TaskGroup; :mod:`.wiring` puts the optional sources together; :mod:`.status` is what the
daemon says about itself (liveness, /healthz, the status line); :mod:`.tuning` holds the
intervals the lab shortens. Nothing here decides anything; it only wires."""
