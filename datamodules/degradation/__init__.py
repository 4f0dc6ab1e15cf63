"""The on-device degradation engine (no Lightning): ``ops`` (operators), ``kernels`` (kernel families and their
centre conventions), ``samplers`` (named parameters, never applied) and ``pipelines`` (one ``Degradation`` module per
degradation model). Import the submodules; this file exports nothing method-specific.
"""
