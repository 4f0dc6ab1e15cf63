"""The on-device degradation engine (no Lightning); import its submodules.

``ops`` (operators), ``kernels`` (kernel families, their centre conventions and the conversions between them),
``samplers`` (named parameters, never applied) and ``pipelines`` (one ``Degradation`` module per degradation model).
This file exports nothing method-specific.
"""
