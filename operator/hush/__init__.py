"""Hush: differential privacy and immutable delivery as a property of the Kubernetes cluster.

The import package lives in the ``operator/`` source root. ``operator`` itself is not a
package: that name belongs to the standard library (see docs/design/0001-source-layout.md).
"""

__version__ = "0.1.0"
