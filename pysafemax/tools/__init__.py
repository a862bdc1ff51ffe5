"""The command-line tools, beside the library and built on its public API.

    diagnose   why a batch's loss reads 87.3365 or nan (python -m pysafemax diagnose)
    scan_log   where a training log's loss got stuck (scan-log)
    explain    the constant a stuck loss value comes from (explain)
    demo, plot the seed's example step by step, and its picture (demo)
    cli        the argparse command line; pysafemax/__main__.py calls its main
    text       the helpers every report writes with (width, numbers, wrapping)
    limits     the float limits the tools name, from numpy's finfo in one place

Nothing is imported here: the submodules diagnose and explain share their
names with the functions they define, so pysafemax.tools.diagnose stays the
module.  The old paths (pysafemax.diagnostics, .logscan, .explain, .demo,
.plotting) re-export these modules.
"""
