"""One module per library: how to submit ``add(x, y)``, read its status and result, and
start its worker. Each module imports its library at the top, so it is imported only
by the client process running in that library's environment.

Every module defines ``Adapter`` with these members, each either a plain method or a
coroutine method:

- ``open()``, ``close()``, ``reset()`` (delete this library's tasks and results);
- ``submit()`` returns a handle for ``add(1, 2)``;
- ``submit_many(count)`` returns ``count`` handles, when ``bulk_api`` is not None;
- ``status(handle)`` reads the task's state from the server once, never from a cache;
- ``result(handle, timeout)`` waits for the result the library's own way;
- ``wait_finished(handle, timeout)`` waits without consuming the stored result;
- ``worker_command()`` returns the worker's argv and extra environment;
- ``versions()`` returns package and server versions.

Class attributes ``waits`` (how the caller learns of a result), ``bulk_api`` and
``status_api`` (the calls measured) go into the report.
"""
