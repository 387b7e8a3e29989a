"""The drivers above network/ and voc12/: the training loop the training scripts share."""
