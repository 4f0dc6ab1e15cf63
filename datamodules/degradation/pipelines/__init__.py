"""Degradation models as modules, one per paper's model: ``base.Degradation`` (the interface) and its subclasses.

``classical.ClassicalDegradation`` (blur, decimation, noise, 8 bit), ``moesr`` (MoESR's training stages), ``mixture``
(Wang et al. 2020). Configs name ``datamodules.degradation.pipelines.ClassicalDegradation``, so the base class and
the classical model are re-exported here; import the method-specific modules themselves.
"""

from datamodules.degradation.pipelines.base import Degradation as Degradation
from datamodules.degradation.pipelines.classical import ClassicalDegradation as ClassicalDegradation
from datamodules.degradation.pipelines.dasr import DASRDegradation as DASRDegradation
