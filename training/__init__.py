"""HonestFace training program (``python training/train.py``); not part of the installed library."""
