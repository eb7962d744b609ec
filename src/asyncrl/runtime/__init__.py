"""Runtimes: where the roles run. ``controller.py`` is the one training loop; ``scheduler.py`` the
lag-bounded dispatch ledger; ``hosts.py`` (inline, thread, process) and ``ray_host.py`` (Ray
actors) host generator workers (``worker.py``); ``transport.py`` / ``broadcast.py`` move weights."""
