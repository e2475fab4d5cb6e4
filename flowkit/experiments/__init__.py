"""Reproducible experiments, one module each, run by ``flowkit reproduce NAME``.

Each module defines ``NAME`` (the sub-command), ``HELP`` (one line),
``add_arguments(parser)``, an optional ``configure(args) -> dict`` and ``run(args, folder)``;
the shared scaffolding (common options and their checks, run folder, seed, threads, figure
style) is :func:`flowkit.experiments._common.launch`. The command line discovers the
modules, so adding an experiment is adding a module here.
"""
