"""rs_hashing: unsupervised cross-modal hashing for remote-sensing image-text retrieval.

The package metadata lives in pyproject.toml (PEP 621); this shim keeps
`python setup.py ...` and tools that expect a setup.py working.
"""

import setuptools

setuptools.setup()
