"""Build the compiled hot paths when Cython is there and GATEWAY_NO_EXTENSIONS is not set.

The package is complete either way: every compiled module has a pure-Python twin, picked by
the selector modules in ``hotpath/`` when the extension is missing or disabled.
"""

import os
import pathlib
import sys

from setuptools import setup

HERE = pathlib.Path(__file__).parent
NO_EXTENSIONS = bool(os.environ.get("GATEWAY_NO_EXTENSIONS"))

ext_modules = []
if not NO_EXTENSIONS:
    try:
        from Cython.Build import cythonize
        from setuptools import Extension
    except ImportError:
        print("*** Pure build: Cython is not installed", file=sys.stderr)
    else:
        sources = sorted((HERE / "hotpath").glob("_*_c.pyx"))
        extensions = [
            Extension(f"hotpath.{src.stem}", [str(src.relative_to(HERE))], extra_compile_args=["-O3"])
            for src in sources
        ]
        ext_modules = cythonize(
            extensions,
            language_level="3",
            compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
        )
        print(f"*** Accelerated build: {len(ext_modules)} hot-path extension(s)", file=sys.stderr)
else:
    print("*** Pure build: GATEWAY_NO_EXTENSIONS is set", file=sys.stderr)

setup(ext_modules=ext_modules)
