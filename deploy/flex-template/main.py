"""Flex Template entry point: `python -m pipelines.stream` with the template's parameters as flags.

The launcher runs FLEX_TEMPLATE_PYTHON_PY_FILE as a script, which puts the script's folder first on
`sys.path`. Pointing it at pipelines/stream.py would let pipelines/inspect.py shadow the standard
library's `inspect`, so this file lives on its own and runs the module by name.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("pipelines.stream", run_name="__main__", alter_sys=True)
