"""Image tests: the Dockerfile and its install steps, without Docker.

``test_dockerfile.py`` reads files only. ``test_image_install.py`` (marker ``image``) runs
hack/image-install.sh for real in a fresh directory, so it needs PyPI (or a warm pip cache)
the way ``make venv`` does, and about a minute; ``make image-test`` runs these alone, and
``PYTEST_FLAGS='-m "not image"'`` leaves the install out of ``make unit``.
"""
