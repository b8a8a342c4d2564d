"""Corpora (WikiText2, PTB, C4, text files) and calibration sampling."""
