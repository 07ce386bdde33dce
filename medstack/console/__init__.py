"""What a person sees at the terminal: short errors, quiet start-up, live progress, past runs.

| module | job |
|---|---|
| ``errors`` | an exception -> a few lines (what, where, what to do) and an exit code |
| ``quiet`` | TensorFlow/Prefect start-up noise off, ``-v``/``-q``, one line per retry |
| ``datapath`` | ``--data PATH``: pick ``data.source`` from the path, ask for what cannot be guessed |
| ``progress`` | live fold/epoch progress of ``medstack run`` (plain lines when not a terminal): a listener of the run's progress events (``medstack.progress``) |
| ``runs`` | ``medstack runs`` and ``medstack compare``: past run folders, read-only |

Nothing here imports TensorFlow or Prefect at module level: ``--help``, ``check-config`` and a config error answer
in well under a second.
"""
