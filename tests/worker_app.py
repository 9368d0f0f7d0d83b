"""The app module that worker subprocesses load with ``--app worker_app:tasks``."""

from taskfuture import TaskService

from apptasks import AppError, register

tasks = TaskService.from_env()
register(tasks)
tasks.register_exception(AppError)
