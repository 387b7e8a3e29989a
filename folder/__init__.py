"""The ``--dataset folder`` dataset: your own images, with their classes and image-level labels, in one folder.

``images/<id>.{jpg,jpeg,png}``, ``classes.txt`` (one class name a line), ``labels.txt`` (``<id> <class> ...``),
``masks/<id>.png`` and ``train.txt`` / ``val.txt``: the layout ``python -m folder.make_toy_folder`` writes as a
small synthetic set. ``folder/dataset.py`` holds the descriptor.
"""
