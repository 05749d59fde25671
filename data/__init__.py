"""Datasets, anomaly synthesis and the demo data.

OpenCV's own thread pool can deadlock DataLoader worker processes forked after the parent
used it; running OpenCV single-threaded (its work here is small) removes that hazard.
"""
import cv2 as _cv2

_cv2.setNumThreads(0)
