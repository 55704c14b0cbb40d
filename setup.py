"""The one compiled part: the seccomp supervisor's fast path (interposer/_fastnotify.c).

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler
(or Python's headers) the install goes on, and every notification is decided in Python
(notify.py), which gives the same answers, a few microseconds slower each.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "interposer._fastnotify",
            sources=["interposer/_fastnotify.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
