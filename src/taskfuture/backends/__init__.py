"""Storage engines. Each implements :class:`taskfuture.backends.base.TaskStorage`."""
