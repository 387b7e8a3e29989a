"""COCO-2014: the descriptor (``--dataset coco14``) and ``python -m coco14.prepare`` (masks, lists, labels)."""
